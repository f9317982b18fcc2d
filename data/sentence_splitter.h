// Rule-based sentence splitter for Korean (and mixed Korean/English) paragraphs, used by
// `bert_prepare clean --split-sentences` to produce the one-sentence-a-line NSP input.
//
// A sentence ends after a run of terminators (. ? ! … 。 ？ ！ and runs such as "?!", "...")
// plus any closing quotes/brackets (" ' ” ’ ) ] 」 』 》 ...), when whitespace or the end follows:
//   - 。？！ end a sentence even without a following space (CJK style);
//   - a terminator glued between two Hangul syllables ends one too ("했다.그리고"): scraped Korean
//     text often lost the space, and no number, URL or file name has Hangul on both sides; for '.'
//     only after a sentence-final ending (다 요 죠 까 네 군), so "주.부.세부" stays whole;
//   - after a closing quote, a quotative particle keeps the sentence going ("왜?" 라고 물었다);
//     so does a lowercase word after ?/! in quotes ("Why?" he asked);
//   - an ellipsis ends a sentence only before an uppercase letter, after a Korean final ending
//     (다 요 죠 까 네 군) or a closing quote ("그런데... 왜" continues);
//   - a list flattened into one line splits before each next marker: a sentence that opens with
//     "1. " (or "가. ", "a. ", "iv. ", "Ⅰ. ") ends before " 2. " ("나. ", "b. ", "v. ", "Ⅱ. "), so
//     "1. 미성년자 2. 피성년후견인" is two sentences, each with its marker;
//   - a single '.' does not end a sentence after: a list number or marker at the sentence start
//     ("1. ", "2.3. ", "가. ", "iv. ", "Ⅱ. "), a number followed by a number or a dotted date
//     ("2024. 1. 15."), an abbreviation (Mr. Dr. e.g. i.e. vs. U.S. Ph.D. ...; No. Fig. p. only
//     before a number; etc. Inc. Ltd. Co. a.m. only before a lowercase word), a single capital
//     initial before a capitalised word ("J. K. Rowling"), or a dotted acronym (segments of 1-2
//     letters: U.S. Ph.D.).
// Dots inside numbers, URLs, e-mails, domains, versions and file names (3.14, 1,000.5,
// example.com, v1.2.3, a.txt) never split because no space follows them. "등." (Korean "etc.")
// does end a sentence: Korean marks no abbreviations with a period, and a nominal list line ends there.
//
// Cost: one pass over the bytes, decoding only at '.', '?', '!' and the lead bytes of the
// multi-byte terminators; output views point into the input (no copies).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace bert {

// Appends the sentences of `paragraph` to `out`, trimmed (ASCII and Unicode spaces) and non-empty;
// the views point into `paragraph`. Input must be valid UTF-8 (text_reader guarantees it).
void split_sentences(std::string_view paragraph, std::vector<std::string_view>& out);

// Convenience form returning copies.
std::vector<std::string> split_sentences(std::string_view paragraph);

}  // namespace bert
