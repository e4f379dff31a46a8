"""The maintenance knowledge base: documents -> chunks -> embeddings -> versioned FAISS index.

Shared by the index-building job (``pipelines/build_index``) and the assistant
deployments (``deployments/assistant``), so both chunk and embed identically.

Modules, one job each:
    corpus       read Markdown / text / PDF documents into ``Document``
    chunking     token-aware, heading-aware chunks (``Chunk``)
    embedding    the sentence-embedding model, loaded once per process
    index_store  versioned FAISS indexes (with answer-sentence vectors) and atomic publish
    retrieval    search with metadata filters, one hit per document (with its sentence vectors)
    answer       extractive answers with citations (no LLM needed; sentences embedded at build time)
    prompt       the assistant prompt from its template
    llm          generation backends: extractive, Ollama, vLLM
"""
