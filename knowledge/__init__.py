"""The maintenance knowledge base: documents -> chunks -> embeddings -> versioned FAISS index.

Shared by the index-building job (``pipelines/build_index``) and the assistant
deployments (``deployments/assistant``), so both chunk and embed identically.

Modules, one job each:
    corpus       read Markdown / text / PDF documents into ``Document``
    chunking     token-aware, heading-aware chunks (``Chunk``)
    embedding    the sentence-embedding model, loaded once per process
    sections     documents as sections of whole blocks (lists, tables never cut), kinds, anchors
    index_store  versioned FAISS indexes (with the section blocks and their vectors) and atomic publish
    retrieval    search with metadata filters, one hit per document; the sections of each document
    grounding    which sections answer a question (procedure + safety notes, or the explaining blocks)
    answer       the extractive answer composed of those sections, and the LLM citation check
    prompt       the assistant prompt from its template
    llm          generation backends: extractive, Ollama, vLLM
"""
