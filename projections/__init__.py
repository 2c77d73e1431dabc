"""The domain core: pure folds from events to patient-month billing state and alerts."""
