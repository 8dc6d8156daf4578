"""`wb.plan`: the most accurate fine-tune that fits a time budget on this machine (`planner.plan`)."""
