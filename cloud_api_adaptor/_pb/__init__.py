"""Generated protobuf modules (make protos). Never edit by hand."""
