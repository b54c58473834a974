"""Fact verification: decide SUPPORTS / REFUTES / NOT ENOUGH INFO for a claim given evidence."""
