"""Classroom helpers: live lab sessions and self-check functions for the exercises."""
