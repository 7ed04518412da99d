#ifndef LORA_CSENTENCEPIECE_H
#define LORA_CSENTENCEPIECE_H
#ifdef __cplusplus
extern "C" {
#endif
typedef struct lora_spm lora_spm;
#ifdef __cplusplus
}
#endif
#endif
