"""Text for calibration, distillation and evaluation: loading documents from files and
datasets, packed token files, and the assets shipped by packages (the demo's teacher, text)."""
