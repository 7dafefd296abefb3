// data/prefix_encode.cpp — PrefixEncoder (data/prefix_encode.h): tokenizing as much of a text as a
// token budget needs, cut only at barriers, where the prefix's tokens are the whole text's.
#include "data/prefix_encode.h"

#include <algorithm>
#include <stdexcept>

namespace {

const std::string kSpace = "\xe2\x96\x81";  // U+2581, sentencepiece's escaped space

bool continuation(unsigned char c) { return (c & 0xc0) == 0x80; }

// Whether s[a, b) is well-formed UTF-8 (sentencepiece's normalizer replaces a malformed byte by
// U+FFFD, which the window below would not model).
bool valid_utf8(const std::string& s, size_t a, size_t b) {
    for (size_t i = a; i < b;) {
        const unsigned char c = (unsigned char)s[i];
        const size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
        if (n == 0 || i + n > b) return false;
        for (size_t k = 1; k < n; k++)
            if (!continuation((unsigned char)s[i + k])) return false;
        i += n;
    }
    return true;
}

}  // namespace

PrefixEncoder::PrefixEncoder(const sentencepiece::SentencePieceProcessor& sp) : sp_(sp) {
    // the longest piece text can match (control, byte and unknown pieces are never matched)
    for (int id = 0; id < sp.GetPieceSize(); id++)
        if (!sp.IsControl(id) && !sp.IsByte(id) && !sp.IsUnknown(id))
            max_piece_bytes_ = std::max(max_piece_bytes_, sp.IdToPiece(id).size());
    // The normalization check: the pieces of each probe, byte pieces as their bytes, must spell the
    // probe with ' ' as U+2581 and (if the first piece has it) a dummy prefix. NFKC would change the
    // full-width letters, the ligature, the circled digit and the composed accent; removing extra
    // whitespace would change the doubled, leading and trailing spaces.
    const std::vector<std::string> probes = {
        "x", "Hello  world,\tthe\nend. ", " leading and  double   spaces  ",
        "\xef\xbc\xa1\xef\xbc\xa2 \xef\xac\x81 \xe2\x91\xa0 e\xcc\x81 \xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80 \xe2\x96\x81x"};
    bool ok = max_piece_bytes_ > 0;
    for (size_t k = 0; ok && k < probes.size(); k++) {
        std::vector<int> ids;
        if (!sp.Encode(probes[k], &ids).ok() || ids.empty()) {
            ok = false;
            break;
        }
        std::string spelled;
        for (int id : ids) {
            const std::string piece = sp.IdToPiece(id);
            if (sp.IsByte(id)) spelled += (char)std::stoi(piece.substr(3, 2), nullptr, 16);  // "<0xE6>"
            else if (sp.IsUnknown(id) || sp.IsControl(id)) ok = false;
            else spelled += piece;
        }
        if (k == 0) dummy_prefix_ = spelled.rfind(kSpace, 0) == 0;
        std::string want = dummy_prefix_ ? kSpace : "";
        for (char c : probes[k]) want += c == ' ' ? kSpace : std::string(1, c);
        ok = ok && spelled == want;
    }
    prefixes_ = ok;
}

std::vector<int32_t> PrefixEncoder::encode_all(const std::string& text) const {
    std::vector<int> ids;
    const auto st = sp_.Encode(text, &ids);
    if (!st.ok()) throw std::runtime_error(st.ToString());
    return std::vector<int32_t>(ids.begin(), ids.end());
}

bool PrefixEncoder::is_barrier(const std::string& text, size_t p) const {
    if (!prefixes_ || p == 0 || p >= text.size() || continuation((unsigned char)text[p])) return false;
    // Source windows of max_piece_bytes_ either side: a normalized piece is at least as long as the
    // source it covers (' ' grows to 3 bytes), so no piece reaches further.
    const size_t m = max_piece_bytes_;
    size_t a = p > m ? p - m : 0, b = std::min(text.size(), p + m);
    while (a < p && continuation((unsigned char)text[a])) a++;
    while (b > p && b < text.size() && continuation((unsigned char)text[b])) b--;
    if (!valid_utf8(text, a, b)) return false;
    auto normalized = [&](size_t from, size_t to) {
        std::string s = from == 0 && dummy_prefix_ ? kSpace : "";
        for (size_t i = from; i < to; i++) s += text[i] == ' ' ? kSpace : std::string(1, text[i]);
        return s;
    };
    const std::string left = normalized(a, p), right = normalized(p, b);
    // every substring across p, shortest first (a crossing piece is usually short: found early)
    for (size_t i = left.size(); i-- > 0;) {
        if (continuation((unsigned char)left[i])) continue;
        if (left.size() - i >= m) break;
        for (size_t j = 1; j <= right.size() && left.size() - i + j <= m; j++) {
            if (j < right.size() && continuation((unsigned char)right[j])) continue;
            const int id = sp_.PieceToId(left.substr(i) + right.substr(0, j));
            if (!sp_.IsUnknown(id) && !sp_.IsControl(id) && !sp_.IsByte(id)) return false;
        }
    }
    return true;
}

std::vector<int32_t> PrefixEncoder::encode(const std::string& text, int64_t limit, bool* complete) const {
    *complete = false;
    if (prefixes_) {
        // A token covers at least one source byte (but the dummy prefix), so limit + 1 tokens need
        // at least limit bytes; English runs ~4 bytes a token. Start there, double until enough.
        const size_t kScan = 4096;  // bytes searched for a barrier before trying further on
        size_t want = 4 * (size_t)std::max<int64_t>(limit, 0) + 256;
        while (want < text.size()) {
            size_t p = want;
            const size_t end = std::min(text.size(), want + kScan);
            while (p < end && !is_barrier(text, p)) p++;
            if (p < end) {
                std::vector<int32_t> ids = encode_all(text.substr(0, p));
                if ((int64_t)ids.size() > limit) return ids;
                want = 2 * p;
            } else {
                want *= 2;
            }
        }
    }
    *complete = true;
    return encode_all(text);
}
