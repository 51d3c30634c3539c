"""What every ``--help`` shows: examples, exit codes, and the rule sets ``--rules`` accepts.

The rule-set list is computed only when help is printed, so defining a command stays cheap.
"""

from __future__ import annotations

import click

EXIT_CODES = {
    0: "ok",
    1: "a check found problems",
    2: "bad usage or unreadable input",
    3: "internal error (rerun with --debug)",
}


def epilog(*examples: str, ok: str = "ok", check: str | None = None) -> str:
    """An epilog with EXAMPLES (kept verbatim) and the exit codes; ``check`` explains exit 1."""
    codes = {**EXIT_CODES, 0: ok}
    if check is None:
        codes.pop(1)
    else:
        codes[1] = check
    lines = ["\b", "Examples:", *(f"  {e}" for e in examples), "", "\b", "Exit codes:"]
    lines += [f"  {code}  {text}" for code, text in sorted(codes.items())]
    return "\n".join(lines)


def rule_set_names() -> list[str]:
    """The names ``--rules NAME`` accepts (built-in and $QDQOPT_RULES_PATH); [] if unreadable."""
    try:
        from ..ruleset import available_rulesets

        return available_rulesets()
    except Exception:  # noqa: BLE001 - help must print even if the rule folder is broken
        return []


class RulesOption(click.Option):
    """``--rules``: its help lists the available rule sets (looked up when help is printed)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        base = self.help
        names = ", ".join(rule_set_names()) or "none found"
        self.help = f"{base or ''} Available: {names} (more via $QDQOPT_RULES_PATH).".lstrip()
        try:
            return super().get_help_record(ctx)
        finally:
            self.help = base


def rules_option(default: str | None = "tensorrt", help: str = "Rule set name or YAML path."):
    """The ``--rules`` option, with the list of rule sets in its help."""
    return click.option(
        "--rules",
        cls=RulesOption,
        metavar="NAME|PATH",
        default=default,
        show_default=default is not None,
        help=help,
    )


def ignore_options(fn):
    """``--ignore REGEX`` (repeatable) and the deprecated, hidden ``--allow-asymmetric``: the
    options optimize and lint share."""
    fn = click.option(
        "--allow-asymmetric",
        is_flag=True,
        hidden=True,
        help="Deprecated, no effect: uint8 and asymmetric int8 are converted (rule symmetric-int8).",
    )(fn)
    return click.option(
        "--ignore",
        multiple=True,
        metavar="REGEX",
        help="Leave nodes whose name matches REGEX alone (repeatable: --ignore A --ignore B).",
    )(fn)
