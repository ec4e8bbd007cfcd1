"""Labels, prompts, dataset layouts, splits, protocols and transforms."""
