"""Assembly: which object gets which clock, client, store and listener. The only floor that builds services; every
object below receives its collaborators in `__init__` (docs/architecture.md)."""
