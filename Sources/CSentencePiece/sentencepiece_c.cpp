// C API over sentencepiece::SentencePieceProcessor; see include/CSentencePiece.h for the contract.
// Every entry point is noexcept in effect: C++ exceptions (std::bad_alloc, or anything the library
// throws) are caught here and turned into an error return.
#include "CSentencePiece.h"

#include <sentencepiece_processor.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

struct lora_spm {
    sentencepiece::SentencePieceProcessor processor;
    int32_t size = 0;  // cached GetPieceSize(), used for range checks
};

namespace {

// Copies `message` into a malloc'd C string for the caller; NULL if `error` is NULL.
void set_error(char **error, const std::string &message) {
    if (error == nullptr) return;
    char *copy = static_cast<char *>(std::malloc(message.size() + 1));
    if (copy != nullptr) {
        std::memcpy(copy, message.data(), message.size());
        copy[message.size()] = '\0';
    }
    *error = copy;
}

void clear_error(char **error) {
    if (error != nullptr) *error = nullptr;
}

bool in_range(const lora_spm *spm, int32_t id) {
    return spm != nullptr && id >= 0 && id < spm->size;
}

// Finishes loading: checks the status and caches the vocabulary size.
lora_spm *finish_load(std::unique_ptr<lora_spm> spm, const sentencepiece::util::Status &status,
                      char **error) {
    if (!status.ok()) {
        set_error(error, status.ToString());
        return nullptr;
    }
    spm->size = spm->processor.GetPieceSize();
    if (spm->size <= 0) {
        set_error(error, "model has an empty vocabulary");
        return nullptr;
    }
    return spm.release();
}

}  // namespace

extern "C" {

lora_spm *lora_spm_load_file(const char *path, char **error) {
    clear_error(error);
    if (path == nullptr) {
        set_error(error, "no path given");
        return nullptr;
    }
    try {
        auto spm = std::make_unique<lora_spm>();
        const auto status = spm->processor.Load(std::string_view(path));
        return finish_load(std::move(spm), status, error);
    } catch (const std::exception &e) {
        set_error(error, std::string("sentencepiece threw: ") + e.what());
    } catch (...) {
        set_error(error, "sentencepiece threw an unknown exception");
    }
    return nullptr;
}

lora_spm *lora_spm_load_proto(const void *data, size_t size, char **error) {
    clear_error(error);
    if (data == nullptr && size != 0) {
        set_error(error, "no data given");
        return nullptr;
    }
    try {
        auto spm = std::make_unique<lora_spm>();
        const auto status = spm->processor.LoadFromSerializedProto(
            std::string_view(static_cast<const char *>(data), size));
        return finish_load(std::move(spm), status, error);
    } catch (const std::exception &e) {
        set_error(error, std::string("sentencepiece threw: ") + e.what());
    } catch (...) {
        set_error(error, "sentencepiece threw an unknown exception");
    }
    return nullptr;
}

void lora_spm_free(lora_spm *spm) {
    try {
        delete spm;
    } catch (...) {
    }
}

void lora_spm_free_string(char *s) { std::free(s); }

int32_t lora_spm_vocab_size(const lora_spm *spm) { return spm == nullptr ? 0 : spm->size; }

// Reserved ids: sentencepiece looks the piece (<s>, </s>, <unk>, <pad>) up by name and returns -1
// when it is absent or not of the reserved type.
#define LORA_SPM_RESERVED(name)                            \
    int32_t lora_spm_##name(const lora_spm *spm) {         \
        if (spm == nullptr) return -1;                     \
        try {                                              \
            return spm->processor.name();                  \
        } catch (...) {                                    \
            return -1;                                     \
        }                                                  \
    }
LORA_SPM_RESERVED(bos_id)
LORA_SPM_RESERVED(eos_id)
LORA_SPM_RESERVED(unk_id)
LORA_SPM_RESERVED(pad_id)
#undef LORA_SPM_RESERVED

int64_t lora_spm_encode(const lora_spm *spm, const char *text, size_t text_len, int32_t *ids,
                        size_t capacity, char **error) {
    clear_error(error);
    if (spm == nullptr || (text == nullptr && text_len != 0) || (ids == nullptr && capacity != 0)) {
        set_error(error, "invalid argument");
        return -1;
    }
    try {
        std::vector<int> out;
        const auto status =
            spm->processor.Encode(std::string_view(text == nullptr ? "" : text, text_len), &out);
        if (!status.ok()) {
            set_error(error, status.ToString());
            return -1;
        }
        if (out.size() <= capacity) {
            for (size_t i = 0; i < out.size(); ++i) ids[i] = static_cast<int32_t>(out[i]);
        }
        return static_cast<int64_t>(out.size());
    } catch (const std::exception &e) {
        set_error(error, std::string("sentencepiece threw: ") + e.what());
    } catch (...) {
        set_error(error, "sentencepiece threw an unknown exception");
    }
    return -1;
}

char *lora_spm_decode(const lora_spm *spm, const int32_t *ids, size_t count, size_t *out_len,
                      char **error) {
    clear_error(error);
    if (out_len != nullptr) *out_len = 0;
    if (spm == nullptr || (ids == nullptr && count != 0)) {
        set_error(error, "invalid argument");
        return nullptr;
    }
    try {
        std::vector<int> in(count);
        for (size_t i = 0; i < count; ++i) {
            if (!in_range(spm, ids[i])) {
                set_error(error, "id " + std::to_string(ids[i]) + " at position " +
                                     std::to_string(i) + " is outside the vocabulary [0, " +
                                     std::to_string(spm->size) + ")");
                return nullptr;
            }
            in[i] = ids[i];
        }
        std::string text;
        const auto status = spm->processor.Decode(in, &text);
        if (!status.ok()) {
            set_error(error, status.ToString());
            return nullptr;
        }
        char *result = static_cast<char *>(std::malloc(text.size() + 1));
        if (result == nullptr) {
            set_error(error, "out of memory");
            return nullptr;
        }
        std::memcpy(result, text.data(), text.size());
        result[text.size()] = '\0';
        if (out_len != nullptr) *out_len = text.size();
        return result;
    } catch (const std::exception &e) {
        set_error(error, std::string("sentencepiece threw: ") + e.what());
    } catch (...) {
        set_error(error, "sentencepiece threw an unknown exception");
    }
    return nullptr;
}

const char *lora_spm_id_to_piece(const lora_spm *spm, int32_t id, size_t *out_len) {
    if (out_len != nullptr) *out_len = 0;
    if (!in_range(spm, id)) return nullptr;
    try {
        const std::string &piece = spm->processor.IdToPiece(id);
        if (out_len != nullptr) *out_len = piece.size();
        return piece.c_str();
    } catch (...) {
        return nullptr;
    }
}

int32_t lora_spm_piece_to_id(const lora_spm *spm, const char *piece, size_t len) {
    if (spm == nullptr || (piece == nullptr && len != 0)) return -1;
    try {
        return spm->processor.PieceToId(std::string_view(piece == nullptr ? "" : piece, len));
    } catch (...) {
        return -1;
    }
}

#define LORA_SPM_PREDICATE(cname, method)                        \
    int lora_spm_##cname(const lora_spm *spm, int32_t id) {      \
        if (!in_range(spm, id)) return 0;                        \
        try {                                                    \
            return spm->processor.method(id) ? 1 : 0;            \
        } catch (...) {                                          \
            return 0;                                            \
        }                                                        \
    }
LORA_SPM_PREDICATE(is_byte, IsByte)
LORA_SPM_PREDICATE(is_control, IsControl)
LORA_SPM_PREDICATE(is_unknown, IsUnknown)
LORA_SPM_PREDICATE(is_unused, IsUnused)
#undef LORA_SPM_PREDICATE

}  // extern "C"
