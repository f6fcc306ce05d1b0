"""Knowledge-distillation retraining of pruned students."""
