"""dtype/layout parsing of every TensorRT format spelling the inspect reader must accept."""

from __future__ import annotations

import pytest

from qdq_optimizer.engines.formats import is_unavailable, parse_dtype, parse_layout


@pytest.mark.parametrize(
    ("text", "dtype"),
    [
        ("Row major linear FP32", "FP32"),
        ("Row major linear FP32.", "FP32"),  # TRT 8.2 trailing dot
        ("Four wide channel vectorized row major Int8 format", "INT8"),
        ("Thirty-two wide channel vectorized row major Int8 format.", "INT8"),
        ("Channel major FP16 format where channel % 2 == 0", "FP16"),
        ("Row major linear FP16 format", "FP16"),
        ("Row major linear Int32", "INT32"),
        ("Row major linear BFloat16 format", "BF16"),
        ("Row major linear FP8 format", "FP8"),
        ("Channel major INT8 format where channel % 16 == 0", "INT8"),
        ("Half", "FP16"),
        ("Float", "FP32"),
        ("Int8", "INT8"),
        ("BFloat16", "BF16"),
        ("Int64", "INT64"),
        ("Bool", "BOOL"),
        ("kINT8", "INT8"),
        ("DataType.HALF", "FP16"),
        ("kFLOAT", "FP32"),
        ("Row major linear FP16 format (kLINEAR)", "FP16"),
        ("FP4", "FP4"),
    ],
)
def test_parse_dtype(text: str, dtype: str) -> None:
    assert parse_dtype(text) == dtype


@pytest.mark.parametrize(
    "text", ["N/A due to dynamic shapes", "Unknown format", "None", "", "Row major linear"]
)
def test_no_dtype_is_none_not_a_guess(text: str) -> None:
    assert parse_dtype(text) is None


def test_non_string_is_none() -> None:
    assert parse_dtype(5) is None
    assert parse_layout(None) == ""


def test_layout_drops_dtype_enum_and_dot() -> None:
    assert parse_layout("Row major linear FP32.") == "Row major linear"
    assert parse_layout("Row major linear (kLINEAR)") == "Row major linear"
    assert (
        parse_layout("Thirty-two wide channel vectorized row major Int8 format")
        == "Thirty-two wide channel vectorized row major"
    )
    assert parse_layout("Channel major FP16 format where channel % 8 == 0") == (
        "Channel major where channel % 8 == 0"
    )


def test_unavailable() -> None:
    assert is_unavailable("N/A due to dynamic shapes")
    assert not is_unavailable("Row major linear FP32")
