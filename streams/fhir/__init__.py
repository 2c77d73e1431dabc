"""FHIR R4 in: resources to wire-contract v1 events (docs/fhir.md). Pure translation; the
public API is :mod:`streams.fhir.convert`."""
