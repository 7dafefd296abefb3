// data/prefix_encode.h — sentencepiece tokenization of only as much of a text as a token budget
// needs, with the same tokens as tokenizing the whole text, so that ./prepare_lima's work per
// conversation is bounded by --max-len (a 10 MB answer cut to 2048 tokens is tokenized over a few
// kilobytes, not 10 MB). Implemented in data/prefix_encode.cpp; tested in test/cpu_prepare_lima.cpp.
//
// Why a prefix gives the same tokens. Call a byte position p of the text a barrier when no piece
// of the vocabulary could cover the text across p (every substring of the normalized text that
// starts before p and ends after it, up to the longest piece, is not a piece). Every symbol that
// BPE ever forms is a piece (or one character), and every node of the unigram lattice is a piece
// (or one unknown character), so at a barrier no symbol and no node crosses p: BPE's merges on the
// left never see the right (its priority queue pops the left's merges in the left's own order),
// and every unigram path passes through p, so the best path is the best left part plus the best
// right part. Either way encode(text[0, p)) is exactly the first tokens of encode(text). The
// encoder looks for a barrier after enough bytes for the budget, tokenizes up to it, and doubles
// the length until the budget is exceeded or the text ends.
//
// The argument needs the normalized text to be the source text with ' ' as U+2581 and a dummy
// prefix (Llama 2's tokenizer: identity normalization): the constructor checks that on probe
// strings (NFKC, or removing extra spaces, would fail it) and otherwise every text is tokenized
// whole. So is a text with no barrier near where the budget runs out (a long run of letters with
// no space, say): correct, just not faster.
#pragma once

#include <sentencepiece_processor.h>

#include <cstdint>
#include <string>
#include <vector>

class PrefixEncoder {
   public:
    explicit PrefixEncoder(const sentencepiece::SentencePieceProcessor& sp);
    // Whether prefixes are used at all (the normalization check passed).
    bool cuts_prefixes() const { return prefixes_; }
    // Either encode(text) (*complete = true: the whole text was tokenized, which it is whenever it
    // has at most `limit` tokens), or a prefix of encode(text) longer than `limit` tokens
    // (*complete = false). A tokenizer error throws
    // std::runtime_error with sentencepiece's message.
    std::vector<int32_t> encode(const std::string& text, int64_t limit, bool* complete) const;
    // Whether byte position p (0 < p < text.size()) of `text` is a barrier (above).
    bool is_barrier(const std::string& text, size_t p) const;

   private:
    std::vector<int32_t> encode_all(const std::string& text) const;
    const sentencepiece::SentencePieceProcessor& sp_;
    bool prefixes_ = false, dummy_prefix_ = false;
    size_t max_piece_bytes_ = 0;  // of the pieces text can match, normalized
};
