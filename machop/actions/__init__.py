"""What each `ch` action does (`run.run_action`; `setup`, which must import nothing but the standard library)."""
