"""A SentencePiece model's vocabulary as GGUF writes it (convert_hf_to_gguf.py's
_create_vocab_sentencepiece): pieces as UTF-8 bytes, scores, and token types. Shared by
make_reference.py (the GGUF fixtures) and make_big.py (the big random checkpoints)."""
import gguf


def spm_vocab(sp):
    """(tokens, scores, types) of a loaded sentencepiece.SentencePieceProcessor, id order."""
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        tt = gguf.TokenType.NORMAL
        if sp.is_unknown(i):
            tt = gguf.TokenType.UNKNOWN
        elif sp.is_control(i):
            tt = gguf.TokenType.CONTROL
        elif sp.is_unused(i):
            tt = gguf.TokenType.UNUSED
        elif sp.is_byte(i):
            tt = gguf.TokenType.BYTE
        types.append(tt)
    return tokens, scores, types
