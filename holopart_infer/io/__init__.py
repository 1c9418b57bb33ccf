"""Input and output: reading part meshes (glTF, OBJ, PLY, STL, OFF, labels, segmenter outputs), frames, writing results."""
