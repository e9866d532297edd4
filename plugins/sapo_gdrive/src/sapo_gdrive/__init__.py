"""sapo-gdrive: A sapo swarm over a shared Google Drive folder, any filesystem, or fsspec storage."""
