#![doc = include_str!("../README.md")]
#![allow(unsafe_code)]

use std::{
    cell::RefCell,
    ffi::{CStr, CString, c_char, c_int, c_short, c_uint, c_void},
    sync::{Mutex, OnceLock},
};

/// The runtime library every espeak-ng install ships.
const LIBRARY: &CStr = c"libespeak-ng.so.1";

// Constants of espeak-ng's `speak_lib.h` (stable since espeak 1.x).
const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
const INITIALIZE_PHONEME_EVENTS: c_int = 0x0001;
/// Without it, a failing initialisation calls `exit()`.
const INITIALIZE_DONT_EXIT: c_int = 0x8000;
const POS_CHARACTER: c_int = 1;
const CHARS_UTF8: c_uint = 1;
const PARAMETER_RATE: c_int = 1;
const EE_OK: c_int = 0;

const EVENT_LIST_TERMINATED: c_int = 0;
const EVENT_WORD: c_int = 1;
const EVENT_SENTENCE: c_int = 2;
const EVENT_END: c_int = 5;
const EVENT_MSG_TERMINATED: c_int = 6;
const EVENT_PHONEME: c_int = 7;

/// `espeak_EVENT` of `speak_lib.h`.
#[repr(C)]
struct RawEvent {
    kind: c_int,
    unique_identifier: c_uint,
    text_position: c_int,
    length: c_int,
    audio_position: c_int,
    sample: c_int,
    user_data: *mut c_void,
    /// The `id` union: a number, a name pointer or an 8-byte phoneme name.
    id: [u8; 8],
}

type SynthCallback = unsafe extern "C" fn(*mut c_short, c_int, *mut RawEvent) -> c_int;
type InitializeFn = unsafe extern "C" fn(c_int, c_int, *const c_char, c_int) -> c_int;
type SetCallbackFn = unsafe extern "C" fn(SynthCallback);
type SetVoiceFn = unsafe extern "C" fn(*const c_char) -> c_int;
type SetVoiceByPropertiesFn = unsafe extern "C" fn(*mut VoiceSpec) -> c_int;

/// `espeak_VOICE` of `speak_lib.h`, as a selection by properties.
#[repr(C)]
struct VoiceSpec {
    name: *const c_char,
    languages: *const c_char,
    identifier: *const c_char,
    gender: u8,
    age: u8,
    variant: u8,
    xx1: u8,
    score: c_int,
    spare: *mut c_void,
}
type SetParameterFn = unsafe extern "C" fn(c_int, c_int, c_int) -> c_int;
type SynthFn = unsafe extern "C" fn(
    *const c_void,
    usize,
    c_uint,
    c_int,
    c_uint,
    c_uint,
    *mut c_uint,
    *mut c_void,
) -> c_int;

/// Why the engine could not synthesize.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// libespeak-ng could not be loaded or initialised.
    #[error("libespeak-ng is unavailable: {0}")]
    Unavailable(String),
    /// The voice is unknown to espeak-ng.
    #[error("espeak-ng has no voice `{0}`")]
    UnknownVoice(String),
    /// The text holds a NUL character.
    #[error("the text contains a NUL character")]
    NulInText,
    /// espeak-ng reported an error code.
    #[error("espeak-ng failed with code {0}")]
    Synthesis(i32),
}

/// What a timed event marks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A word: `text_position` and `length` are its characters in the text.
    Word,
    /// A sentence starts.
    Sentence,
    /// A phoneme, by espeak's mnemonic (`h`, `@`, `oU`, `_:` for a pause…).
    Phoneme(String),
}

/// One timed event of a synthesis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What it marks.
    pub kind: EventKind,
    /// Start, in ms from the start of the audio.
    pub audio_ms: u32,
    /// Character offset (0-based, in Unicode scalar values) into the text.
    pub text_position: u32,
    /// Characters covered (words only; 0 otherwise).
    pub length: u32,
}

/// A synthesis with its events.
#[derive(Debug, Clone, Default)]
pub struct Synthesis {
    /// Signed 16-bit mono samples.
    pub samples: Vec<i16>,
    /// Sample rate of `samples`.
    pub sample_rate_hz: u32,
    /// Events in the order espeak emitted them.
    pub events: Vec<Event>,
}

/// The loaded library's entry points.
struct Api {
    set_voice: SetVoiceFn,
    set_voice_by_properties: SetVoiceByPropertiesFn,
    set_parameter: SetParameterFn,
    synth: SynthFn,
    sample_rate_hz: u32,
}

/// The process-wide engine; libespeak-ng has one global state.
pub struct Engine {
    api: Api,
    /// Serialises every call into the library.
    lock: Mutex<()>,
}

thread_local! {
    /// The synthesis being collected by the callback on this thread; set only
    /// while the engine's lock is held and `espeak_Synth` runs (synchronous
    /// mode calls back on the calling thread).
    static COLLECTING: RefCell<Option<Synthesis>> = const { RefCell::new(None) };
}

static ENGINE: OnceLock<Result<Engine, EngineError>> = OnceLock::new();

impl Engine {
    /// The engine, loading and initialising libespeak-ng on first use.
    pub fn open() -> Result<&'static Engine, EngineError> {
        ENGINE.get_or_init(load).as_ref().map_err(Clone::clone)
    }

    /// Speaks `text` with `voice` (`en-us`, `en-us+f1`, …) at
    /// `words_per_minute`; blocks until done.
    pub fn synthesize(
        &self,
        voice: &str,
        words_per_minute: u32,
        text: &str,
    ) -> Result<Synthesis, EngineError> {
        let voice_c = CString::new(voice).map_err(|_| EngineError::UnknownVoice(voice.into()))?;
        let text_c = CString::new(text).map_err(|_| EngineError::NulInText)?;
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // SAFETY: the library is initialised (`load`), every call holds the
        // lock, and the pointers are valid NUL-terminated strings that
        // outlive the calls.
        unsafe {
            // As the espeak-ng command line does for `-v`: a voice name
            // first, else a language (`en-gb`, `en-gb+f1`).
            if (self.api.set_voice)(voice_c.as_ptr()) != EE_OK {
                let mut spec = VoiceSpec {
                    name: std::ptr::null(),
                    languages: voice_c.as_ptr(),
                    identifier: std::ptr::null(),
                    gender: 0,
                    age: 0,
                    variant: 0,
                    xx1: 0,
                    score: 0,
                    spare: std::ptr::null_mut(),
                };
                if (self.api.set_voice_by_properties)(&mut spec) != EE_OK {
                    return Err(EngineError::UnknownVoice(voice.into()));
                }
            }
            let rate = c_int::try_from(words_per_minute).unwrap_or(175);
            (self.api.set_parameter)(PARAMETER_RATE, rate, 0);
        }
        COLLECTING.with(|c| {
            *c.borrow_mut() = Some(Synthesis {
                sample_rate_hz: self.api.sample_rate_hz,
                ..Synthesis::default()
            })
        });
        let bytes = text_c.as_bytes_with_nul();
        // SAFETY: as above; `espeak_Synth` reads `bytes.len()` bytes of the
        // text and, in synchronous mode, calls `collect` on this thread
        // before it returns.
        let code = unsafe {
            (self.api.synth)(
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                POS_CHARACTER,
                0,
                CHARS_UTF8,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        let collected = COLLECTING
            .with(|c| c.borrow_mut().take())
            .unwrap_or_default();
        if code == EE_OK {
            Ok(collected)
        } else {
            Err(EngineError::Synthesis(code))
        }
    }
}

/// Opens the library, resolves the entry points and initialises espeak in
/// synchronous mode with phoneme events.
fn load() -> Result<Engine, EngineError> {
    // SAFETY: dlopen/dlsym with valid C strings; each symbol is cast to the
    // signature `speak_lib.h` declares for it. The handle is never closed,
    // so the function pointers stay valid for the life of the process.
    unsafe {
        let handle = libc::dlopen(LIBRARY.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if handle.is_null() {
            return Err(EngineError::Unavailable(format!(
                "cannot open {}",
                LIBRARY.to_string_lossy()
            )));
        }
        let symbol = |name: &CStr| {
            let found = libc::dlsym(handle, name.as_ptr());
            if found.is_null() {
                Err(EngineError::Unavailable(format!(
                    "{} lacks {}",
                    LIBRARY.to_string_lossy(),
                    name.to_string_lossy()
                )))
            } else {
                Ok(found)
            }
        };
        let initialize: InitializeFn = std::mem::transmute(symbol(c"espeak_Initialize")?);
        let set_callback: SetCallbackFn = std::mem::transmute(symbol(c"espeak_SetSynthCallback")?);
        let set_voice: SetVoiceFn = std::mem::transmute(symbol(c"espeak_SetVoiceByName")?);
        let set_voice_by_properties: SetVoiceByPropertiesFn =
            std::mem::transmute(symbol(c"espeak_SetVoiceByProperties")?);
        let set_parameter: SetParameterFn = std::mem::transmute(symbol(c"espeak_SetParameter")?);
        let synth: SynthFn = std::mem::transmute(symbol(c"espeak_Synth")?);
        let rate = initialize(
            AUDIO_OUTPUT_SYNCHRONOUS,
            0,
            std::ptr::null(),
            INITIALIZE_PHONEME_EVENTS | INITIALIZE_DONT_EXIT,
        );
        let sample_rate_hz = u32::try_from(rate).ok().filter(|r| *r > 0).ok_or_else(|| {
            EngineError::Unavailable(format!("espeak_Initialize returned {rate}"))
        })?;
        set_callback(collect);
        Ok(Engine {
            api: Api {
                set_voice,
                set_voice_by_properties,
                set_parameter,
                synth,
                sample_rate_hz,
            },
            lock: Mutex::new(()),
        })
    }
}

/// The synthesis callback: appends samples and events to [`COLLECTING`].
/// Returns 0 to continue.
unsafe extern "C" fn collect(wav: *mut c_short, samples: c_int, events: *mut RawEvent) -> c_int {
    COLLECTING.with(|cell| {
        let mut slot = cell.borrow_mut();
        let Some(out) = slot.as_mut() else {
            return 0;
        };
        if !wav.is_null() && samples > 0 {
            // SAFETY: espeak passes `samples` valid samples at `wav`.
            let chunk = unsafe { std::slice::from_raw_parts(wav, samples as usize) };
            out.samples.extend_from_slice(chunk);
        }
        let mut cursor = events;
        while !cursor.is_null() {
            // SAFETY: the event list is an array ended by an event of type
            // LIST_TERMINATED, valid for the duration of the callback.
            let event = unsafe { &*cursor };
            let kind = match event.kind {
                EVENT_LIST_TERMINATED | EVENT_MSG_TERMINATED | EVENT_END => None,
                EVENT_WORD => Some(EventKind::Word),
                EVENT_SENTENCE => Some(EventKind::Sentence),
                EVENT_PHONEME => {
                    let end = event.id.iter().position(|b| *b == 0).unwrap_or(8);
                    Some(EventKind::Phoneme(
                        String::from_utf8_lossy(&event.id[..end]).into_owned(),
                    ))
                }
                _ => None,
            };
            if let Some(kind) = kind {
                out.events.push(Event {
                    kind,
                    audio_ms: u32::try_from(event.audio_position).unwrap_or(0),
                    // espeak counts characters from 1.
                    text_position: u32::try_from(event.text_position - 1).unwrap_or(0),
                    length: u32::try_from(event.length).unwrap_or(0),
                });
            }
            if event.kind == EVENT_LIST_TERMINATED {
                break;
            }
            // SAFETY: not yet at the terminator, so the next element exists.
            cursor = unsafe { cursor.add(1) };
        }
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialect_ids_and_variants_select_voices_as_the_command_line_does() {
        let engine = Engine::open().expect("libespeak-ng loads on this machine");
        for voice in ["en-gb", "en-gb+f1", "en-us+m3", "fr-fr", "cmn", "es-419"] {
            let out = engine
                .synthesize(voice, 175, "one two")
                .unwrap_or_else(|e| panic!("{voice}: {e}"));
            assert!(out.samples.len() > 1_000, "{voice}");
        }
        assert!(matches!(
            engine.synthesize("xx-nope", 175, "x"),
            Err(EngineError::UnknownVoice(_))
        ));
    }

    #[test]
    fn word_positions_count_characters_not_bytes() {
        let engine = Engine::open().expect("libespeak-ng loads on this machine");
        let text = "Café naïve déjà vu";
        let out = engine.synthesize("fr-fr", 175, text).expect("synthesis");
        let spoken: Vec<String> = out
            .events
            .iter()
            .filter(|e| e.kind == EventKind::Word)
            .map(|w| {
                text.chars()
                    .skip(w.text_position as usize)
                    .take(w.length as usize)
                    .collect()
            })
            .collect();
        assert_eq!(spoken, ["Café", "naïve", "déjà", "vu"]);
    }

    #[test]
    fn words_and_phonemes_come_with_rising_times() {
        let engine = Engine::open().expect("libespeak-ng loads on this machine");
        let text = "Hello brave world. Second sentence here.";
        let out = engine.synthesize("en-us", 175, text).expect("synthesis");
        assert!(out.samples.len() > 10_000);
        let words: Vec<&Event> = out
            .events
            .iter()
            .filter(|e| e.kind == EventKind::Word)
            .collect();
        let spoken: Vec<String> = words
            .iter()
            .map(|w| {
                text.chars()
                    .skip(w.text_position as usize)
                    .take(w.length as usize)
                    .collect()
            })
            .collect();
        assert_eq!(
            spoken,
            ["Hello", "brave", "world", "Second", "sentence", "here"],
            "{:?}",
            out.events
        );
        assert!(words.windows(2).all(|w| w[0].audio_ms < w[1].audio_ms));
        assert!(
            out.events
                .iter()
                .any(|e| matches!(&e.kind, EventKind::Phoneme(p) if p == "l"))
        );
        assert_eq!(
            out.events
                .iter()
                .filter(|e| e.kind == EventKind::Sentence)
                .count(),
            2
        );
    }
}
