"""The ground floor: errors, settings schemas, files and manifests, model shapes, devices,
precision, process groups, hub resolution and model loading. Imports nothing above it."""
