"""Links over time: ISL and GSL rules, the link series, and its step-to-step changes."""

from meshemu.links.series import LinkChanges, LinkSeries, compute_link_series

__all__ = ["LinkChanges", "LinkSeries", "compute_link_series"]
