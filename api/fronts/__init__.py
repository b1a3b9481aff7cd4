"""Compatible fronts: the OpenAI and Ollama wire formats over the native pipeline.

Each front only translates shapes at the edge: its request into an EmbeddingRequest,
the pipeline's Outcome into its answer, and errors into its error shape.
"""
