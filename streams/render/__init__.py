"""Output formats: patient-month views and audit reports."""
