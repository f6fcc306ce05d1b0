"""Ready recipes, importable as ``minitron_recipes`` so installed copies ship them."""
