"""facesearch-train: fine-tune the face embedder (torch and torchvision live here and in export/ only)."""
