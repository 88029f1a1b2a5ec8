//! pocketsphinx with the command grammar, giving its best readings of an utterance, not
//! only the first.
//!
//! The `pocketsphinx` crate's n-best iterator reads each hypothesis after it has already
//! moved the C iterator on, so the last item it yields reads a list pocketsphinx has freed;
//! and its decoder keeps the C pointer to itself. This module therefore drives Debian's
//! library directly for the one decoder that needs alternatives: `ps_nbest` walks the
//! utterance's lattice best path first, and each `ps_nbest_next` must be followed by
//! `ps_nbest_hyp` on the same (still live) iterator.
//!
//! Why alternatives: the grammar's best path is sometimes a near miss ("add bike milk"
//! for "add buy milk" in espeak-ng's voice) while the words said are a little further down
//! its list. Whisper scores each reading against the audio and the best-scoring one counts
//! (see `stt::arbitrate`), so a second or third reading costs a forced alignment each, a
//! small fraction of a decode.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr;

use super::stt::{SphinxModel, GRAMMAR_SEARCH};

/// The library's opaque types.
#[repr(C)]
struct PsDecoder {
    _opaque: [u8; 0],
}
#[repr(C)]
struct PsNbest {
    _opaque: [u8; 0],
}
#[repr(C)]
struct CmdLn {
    _opaque: [u8; 0],
}

// Declared as in Debian's pocketsphinx 0.8+5prealpha headers (pocketsphinx.h, cmd_ln.h);
// the library is linked by the `pocketsphinx-sys` crate's pkg-config probe.
extern "C" {
    fn ps_args() -> *const c_void;
    fn cmd_ln_parse_r(
        inout: *mut CmdLn,
        defn: *const c_void,
        argc: i32,
        argv: *const *const c_char,
        strict: i32,
    ) -> *mut CmdLn;
    fn cmd_ln_free_r(config: *mut CmdLn) -> c_int;
    fn ps_init(config: *mut CmdLn) -> *mut PsDecoder;
    fn ps_free(ps: *mut PsDecoder) -> c_int;
    fn ps_set_jsgf_string(ps: *mut PsDecoder, name: *const c_char, jsgf: *const c_char) -> c_int;
    fn ps_set_search(ps: *mut PsDecoder, name: *const c_char) -> c_int;
    fn ps_start_utt(ps: *mut PsDecoder) -> c_int;
    fn ps_process_raw(
        ps: *mut PsDecoder,
        data: *const i16,
        n_samples: usize,
        no_search: c_int,
        full_utt: c_int,
    ) -> c_int;
    fn ps_end_utt(ps: *mut PsDecoder) -> c_int;
    fn ps_get_hyp(ps: *mut PsDecoder, out_best_score: *mut i32) -> *const c_char;
    fn ps_nbest(ps: *mut PsDecoder) -> *mut PsNbest;
    fn ps_nbest_next(nbest: *mut PsNbest) -> *mut PsNbest;
    fn ps_nbest_hyp(nbest: *mut PsNbest, out_score: *mut i32) -> *const c_char;
    fn ps_nbest_free(nbest: *mut PsNbest);
}

/// How many paths of the lattice are walked, at most, looking for other readings: the
/// n-best list repeats readings (the same words, other timings), and each step costs.
const MAX_PATHS: usize = 24;

/// A pocketsphinx decoder with one search, the command grammar. Not `Send`: it lives on the
/// thread that made it.
pub struct GrammarDecoder {
    ps: *mut PsDecoder,
}

impl GrammarDecoder {
    /// A decoder of `model` whose only search is `jsgf`.
    pub fn new(model: &SphinxModel, jsgf: &str) -> Result<GrammarDecoder, String> {
        let args = model
            .args()
            .into_iter()
            .map(CString::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| "a pocketsphinx model path holds a NUL byte".to_owned())?;
        let argv: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
        let name = CString::new(GRAMMAR_SEARCH).expect("no NUL");
        let jsgf = CString::new(jsgf).map_err(|_| "the grammar holds a NUL byte".to_owned())?;
        // SAFETY: `argv` points to `args`, alive for the call (the parser copies what it
        // keeps); the decoder takes its own reference to the configuration, and ours is
        // released once it is made.
        unsafe {
            let config = cmd_ln_parse_r(
                ptr::null_mut(),
                ps_args(),
                argv.len() as i32,
                argv.as_ptr(),
                1,
            );
            if config.is_null() {
                return Err("pocketsphinx rejected its configuration".into());
            }
            let ps = ps_init(config);
            cmd_ln_free_r(config);
            if ps.is_null() {
                return Err("pocketsphinx could not load its model".into());
            }
            let decoder = GrammarDecoder { ps };
            if ps_set_jsgf_string(ps, name.as_ptr(), jsgf.as_ptr()) != 0
                || ps_set_search(ps, name.as_ptr()) != 0
            {
                return Err("pocketsphinx could not load the command grammar".into());
            }
            Ok(decoder)
        }
    }

    /// The grammar's readings of one utterance (16 kHz mono), best first, each once, at most
    /// `max`; none when the grammar found nothing.
    pub fn readings(&mut self, samples: &[i16], max: usize) -> Vec<String> {
        let mut readings: Vec<String> = Vec::new();
        // SAFETY: `self.ps` is a live decoder owned by this value; `samples` is alive for
        // the call. Every string the library returns is copied before the next call into
        // it. The n-best iterator is read only between a `ps_nbest_next` that returned it
        // and the next one, and freed unless that call already freed it (it returns NULL
        // when it does).
        unsafe {
            if ps_start_utt(self.ps) < 0
                || ps_process_raw(self.ps, samples.as_ptr(), samples.len(), 0, 1) < 0
                || ps_end_utt(self.ps) < 0
            {
                return readings;
            }
            let mut score = 0;
            push_reading(&mut readings, ps_get_hyp(self.ps, &mut score));
            if readings.is_empty() {
                return readings;
            }
            let mut nbest = ps_nbest(self.ps);
            let mut paths = 0;
            while !nbest.is_null() && readings.len() < max && paths < MAX_PATHS {
                nbest = ps_nbest_next(nbest);
                if nbest.is_null() {
                    break;
                }
                paths += 1;
                push_reading(&mut readings, ps_nbest_hyp(nbest, &mut score));
            }
            if !nbest.is_null() {
                ps_nbest_free(nbest);
            }
        }
        readings
    }
}

/// Adds the reading `hyp` (a C string, or NULL) unless it is empty or already there.
///
/// # Safety
/// `hyp` is NULL or a NUL-terminated string alive for the call.
unsafe fn push_reading(readings: &mut Vec<String>, hyp: *const c_char) {
    if hyp.is_null() {
        return;
    }
    let text = CStr::from_ptr(hyp).to_string_lossy();
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if !text.is_empty() && !readings.contains(&text) {
        readings.push(text);
    }
}

impl Drop for GrammarDecoder {
    fn drop(&mut self) {
        // SAFETY: the decoder is ours and used by nothing after this.
        unsafe {
            ps_free(self.ps);
        }
    }
}
