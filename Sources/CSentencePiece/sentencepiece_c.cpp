#include "CSentencePiece.h"
#include <sentencepiece_processor.h>
