"""The training engine and its parts: parameter selection, optimizers, schedules."""
