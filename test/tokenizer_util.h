// test/tokenizer_util.h — small sentencepiece models for the CPU tests (test/cpu_export_hf.cpp,
// test/cpu_sample.cpp), trained on LIMA's text from ../shared/data; links -lsentencepiece_train.
// Not part of the GPU suite.
#pragma once

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sentencepiece_trainer.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "test_util.h"

// A sentencepiece model of `type` (bpe or unigram) with exactly `vocab` pieces and the given
// <s>/</s> ids (<unk> = 0, no <pad>), written to dir; returns its path. Any text would do:
// the tests need a real, loadable model of a given size, not a good one.
inline std::string train_test_tokenizer(const std::string& dir, int vocab, const std::string& type = "bpe",
                                        int bos = 1, int eos = 2) {
    const std::string prefix = dir + "/tok_" + type + std::to_string(vocab) + "_" + std::to_string(bos) + "_" +
                               std::to_string(eos);
    const std::string args = "--input=" + shared_dir() + "/data/lima/train.jsonl --model_prefix=" + prefix +
                             " --vocab_size=" + std::to_string(vocab) + " --model_type=" + type +
                             " --input_sentence_size=2000 --unk_id=0 --bos_id=" + std::to_string(bos) +
                             " --eos_id=" + std::to_string(eos) + " --pad_id=-1 --minloglevel=2 --num_threads=2";
    // the trainer logs to stderr whatever minloglevel says; keep the test output readable
    fflush(stderr);
    int saved = dup(2), devnull = open("/dev/null", O_WRONLY);
    dup2(devnull, 2);
    auto status = sentencepiece::SentencePieceTrainer::Train(args);
    dup2(saved, 2);
    close(saved);
    close(devnull);
    REQUIRE_MESSAGE(status.ok(), "training a test tokenizer: " << status.ToString());
    return prefix + ".model";
}
