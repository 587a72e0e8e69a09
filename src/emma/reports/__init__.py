"""Campaign results: tactics against their holdout groups, and each channel's funnel."""
