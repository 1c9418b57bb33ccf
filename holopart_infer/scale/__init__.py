"""Many objects: resumable batch runs on one machine and scale-out on Ray."""
