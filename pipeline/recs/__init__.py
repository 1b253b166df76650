"""Recommendation lists shared by ``evaluate`` and ``score``: the one top-K, the metrics,
whom to score, chunked ranking, and the dated output partition."""
