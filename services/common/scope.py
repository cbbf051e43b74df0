"""Who may see what: the one rule every service applies to a caller scoped to one site (or one courier
company). What a caller may not see answers exactly as what does not exist: the same 404, word for word,
so a scoped caller learns nothing of another site's objects, not even that they exist."""

from __future__ import annotations


def visible_to(scope: str | None, owner: str | None) -> bool:
    """Whether a caller scoped to `scope` (a treatment center's own site id, or a courier's company; None:
    not scoped, every one) may see and act on an object owned by `owner`."""
    return scope is None or scope == owner


def not_found(kind: str) -> str:
    """The detail of the 404 for a missing object and for one out of the caller's scope alike: it names
    the kind of object, never the id the caller sent."""
    return f"no such {kind}"
