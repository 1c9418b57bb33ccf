"""After extraction: clean-up, decimation, thin-part stand-ins, per-part trust measures, previews."""
