"""curmoe.exporters (placeholder: filled in by a later issue)."""

__all__: list[str] = []
