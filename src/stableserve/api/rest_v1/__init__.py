"""REST v1 (and its /v1beta and /v1alpha forms): CONTRACT.md §2."""
