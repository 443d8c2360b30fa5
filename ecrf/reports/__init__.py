"""Study-level aggregate reports: counts only, per site and overall, small cells protected for sponsors."""
