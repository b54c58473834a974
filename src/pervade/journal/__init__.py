"""The durable record of a run: items, attempts and accepted outcomes, in SQLite (WAL)."""

from pervade.journal.store import Accepted, Journal, JournalMismatch, Outcome

__all__ = ["Accepted", "Journal", "JournalMismatch", "Outcome"]
