// A small C API over libsentencepiece's `sentencepiece::SentencePieceProcessor`, so that Swift
// needs no C++ interop. No C++ exception crosses this boundary: every entry point catches and
// reports failure through its return value (and, where there is one, an error out-parameter).
//
// Ids are int32_t, as in SentencePiece. Every id argument is range-checked here: libsentencepiece
// itself indexes its piece table without a check, so an id outside [0, vocab_size) would be
// undefined behaviour there.
//
// Error strings (`char **error`) are allocated with malloc; free them with `lora_spm_free_string`.
// `error` may be NULL when the caller does not want the message. On success `*error` is set to NULL.
#ifndef LORA_CSENTENCEPIECE_H
#define LORA_CSENTENCEPIECE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// An opaque, loaded SentencePiece model. Const operations on it are safe to call from several
// threads at once (libsentencepiece's Encode/Decode are const and keep no mutable state).
typedef struct lora_spm lora_spm;

// Loads a model from a `tokenizer.model` file. Returns NULL on failure (and sets `*error`).
lora_spm *lora_spm_load_file(const char *path, char **error);

// Loads a model from a serialized `ModelProto` held in memory (`size` bytes at `data`; copied).
// Returns NULL on failure (and sets `*error`).
lora_spm *lora_spm_load_proto(const void *data, size_t size, char **error);

// Frees a model; NULL is allowed.
void lora_spm_free(lora_spm *spm);

// Frees a string returned by this API (error messages, decoded text); NULL is allowed.
void lora_spm_free_string(char *s);

// Number of pieces in the vocabulary.
int32_t lora_spm_vocab_size(const lora_spm *spm);

// Reserved ids, or -1 when the model does not define one (LLaMA's tokenizer.model has no pad).
int32_t lora_spm_bos_id(const lora_spm *spm);
int32_t lora_spm_eos_id(const lora_spm *spm);
int32_t lora_spm_unk_id(const lora_spm *spm);
int32_t lora_spm_pad_id(const lora_spm *spm);

// Encodes `text_len` bytes of UTF-8 at `text` (NUL bytes allowed) into ids, with no BOS/EOS.
// Writes at most `capacity` ids to `ids` (which may be NULL when `capacity` is 0) and returns the
// total number of ids the text encodes to: when that is larger than `capacity`, nothing useful was
// written and the caller should call again with a buffer that large (two-call size query).
// Returns -1 on failure (and sets `*error`).
int64_t lora_spm_encode(const lora_spm *spm, const char *text, size_t text_len,
                        int32_t *ids, size_t capacity, char **error);

// Decodes `count` ids into UTF-8 text, the way SentencePiece detokenizes: control pieces (<s>,
// </s>) are invisible, byte pieces are joined into characters (invalid sequences become U+FFFD),
// "▁" becomes a space, and the leading space of the first piece is dropped. Returns a malloc'd,
// NUL-terminated string whose byte length (the text may itself hold NUL bytes) goes to `*out_len`;
// free it with `lora_spm_free_string`. Returns NULL on failure, including an id out of range.
char *lora_spm_decode(const lora_spm *spm, const int32_t *ids, size_t count, size_t *out_len,
                      char **error);

// The piece for `id` (e.g. "▁the", "<0x0A>", "<s>"), as a pointer into the model that stays valid
// until `lora_spm_free`; its byte length goes to `*out_len` (may be NULL). NULL if out of range.
const char *lora_spm_id_to_piece(const lora_spm *spm, int32_t id, size_t *out_len);

// The id of a piece given as `len` bytes; returns the unk id when the piece is not in the vocabulary
// (SentencePiece's behaviour), or -1 on failure.
int32_t lora_spm_piece_to_id(const lora_spm *spm, const char *piece, size_t len);

// Piece types. Each returns 0 for an id out of range.
int lora_spm_is_byte(const lora_spm *spm, int32_t id);
int lora_spm_is_control(const lora_spm *spm, int32_t id);
int lora_spm_is_unknown(const lora_spm *spm, int32_t id);
int lora_spm_is_unused(const lora_spm *spm, int32_t id);

#ifdef __cplusplus
}
#endif

#endif  // LORA_CSENTENCEPIECE_H
