"""The maintenance knowledge base: documents -> chunks -> embeddings -> versioned FAISS index.

Shared by the index-building job (``pipelines/build_index``) and the assistant
deployments (``deployments/assistant``), so both chunk and embed identically.

Modules, one job each:
    corpus       read Markdown / text / PDF documents into ``Document``
    chunking     token-aware, heading-aware chunks (``Chunk``)
    embedding    the sentence-embedding model, loaded once per process
    index_store  versioned FAISS indexes with atomic publish
    retrieval    search with metadata filters, one hit per document
    answer       extractive answers with citations (no LLM needed)
    prompt       the assistant prompt from its template
    llm          generation backends: extractive, Ollama, vLLM
"""
