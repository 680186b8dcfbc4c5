//! Signal processing on mono 16-bit PCM: changing the sample rate
//! ([`resample`]) and the tempo at the same pitch ([`time_stretch`]).
//!
//! Both are pure and synchronous, and run on whole utterances (seconds of
//! speech), so they favour clarity over streaming.

use std::f64::consts::PI;

/// Zero crossings of the sinc kernel on each side of a tap: the kernel's
/// half-width in cycles of the lower of the two rates. 16 gives a
/// transition band of a few hundred Hz, stopband below -80 dB with the
/// window's beta.
const SINC_ZERO_CROSSINGS: f64 = 16.0;

/// Kaiser window shape: about 80 dB of stopband attenuation.
const KAISER_BETA: f64 = 8.0;

/// The passband edge as a fraction of the lower Nyquist frequency: what
/// keeps the transition band below it, so nothing aliases.
const CUTOFF: f64 = 0.95;

/// Kernel values per input sample of distance, linearly interpolated
/// between.
const KERNEL_RESOLUTION: usize = 512;

/// `samples` at `from_hz` resampled to `to_hz` by windowed-sinc
/// interpolation (a Kaiser-windowed sinc, band-limited to the lower rate's
/// Nyquist frequency). The length scales with the rates, rounded. Equal
/// rates, or a rate of 0, return the samples unchanged.
pub fn resample(samples: &[i16], from_hz: u32, to_hz: u32) -> Vec<i16> {
    if from_hz == to_hz || from_hz == 0 || to_hz == 0 || samples.is_empty() {
        return samples.to_vec();
    }
    let (from, to) = (u64::from(from_hz), u64::from(to_hz));
    let out_len = usize::try_from((samples.len() as u64 * to + from / 2) / from).unwrap_or(0);
    // The cutoff in cycles per input sample (1.0 = the input's Nyquist).
    let cutoff = CUTOFF * (to_hz as f64 / from_hz as f64).min(1.0);
    let half_width = SINC_ZERO_CROSSINGS / cutoff;
    let kernel = Kernel::new(cutoff, half_width);
    let reach = half_width.ceil() as i64;
    let last = samples.len() as i64 - 1;
    (0..out_len as u64)
        .map(|n| {
            let position = n * from;
            let centre = (position / to) as i64;
            let frac = (position % to) as f64 / to as f64;
            let mut acc = 0.0;
            for k in (centre - reach + 1).max(0)..=(centre + reach).min(last) {
                acc += f64::from(samples[k as usize]) * kernel.at((k - centre) as f64 - frac);
            }
            to_i16(acc)
        })
        .collect()
}

/// A windowed sinc, tabulated over `0..=half_width` input samples.
struct Kernel {
    table: Vec<f64>,
    half_width: f64,
}

impl Kernel {
    fn new(cutoff: f64, half_width: f64) -> Self {
        let points = (half_width * KERNEL_RESOLUTION as f64).ceil() as usize + 2;
        let norm = bessel_i0(KAISER_BETA);
        let table = (0..points)
            .map(|i| {
                let d = i as f64 / KERNEL_RESOLUTION as f64;
                if d >= half_width {
                    return 0.0;
                }
                let x = d / half_width;
                let window = bessel_i0(KAISER_BETA * (1.0 - x * x).sqrt()) / norm;
                cutoff * sinc(cutoff * d) * window
            })
            .collect();
        Self { table, half_width }
    }

    /// The kernel at distance `d` (in input samples, either sign).
    fn at(&self, d: f64) -> f64 {
        let d = d.abs();
        if d >= self.half_width {
            return 0.0;
        }
        let pos = d * KERNEL_RESOLUTION as f64;
        let i = pos as usize;
        let t = pos - i as f64;
        match (self.table.get(i), self.table.get(i + 1)) {
            (Some(a), Some(b)) => a + (b - a) * t,
            (Some(a), None) => *a,
            _ => 0.0,
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x.abs() < 1e-12 {
        1.0
    } else {
        (PI * x).sin() / (PI * x)
    }
}

/// The zeroth-order modified Bessel function of the first kind, by its
/// power series (converges fast for the window's arguments).
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let half = x / 2.0;
    for k in 1..64 {
        term *= half / k as f64;
        let add = term * term;
        sum += add;
        if add < sum * 1e-16 {
            break;
        }
    }
    sum
}

/// Frame length of [`time_stretch`]: long enough to hold two pitch periods
/// of a low voice (80 Hz), short enough not to smear syllables.
const STRETCH_FRAME_MS: u32 = 30;

/// How far [`time_stretch`] may shift a frame to line its waveform up with
/// the output so far: more than one pitch period of a low voice.
const STRETCH_TOLERANCE_MS: u32 = 12;

/// Below this difference from 1.0 a stretch is not worth its artefacts.
pub const STRETCH_EPSILON: f64 = 0.005;

/// `samples` played `speed` times faster (0.5: twice as long) at the same
/// pitch, by WSOLA: Hann-windowed frames taken from the input at `speed`
/// times the output's step, each shifted within a tolerance to where its
/// waveform best continues the previous frame, then overlap-added.
/// The result lasts the input's duration divided by `speed`. Beside the
/// input and the output it holds one frame.
pub fn time_stretch(samples: &[i16], sample_rate_hz: u32, speed: f64) -> Vec<i16> {
    if !speed.is_finite()
        || speed <= 0.0
        || (speed - 1.0).abs() < STRETCH_EPSILON
        || samples.is_empty()
        || sample_rate_hz == 0
    {
        return samples.to_vec();
    }
    let rate = sample_rate_hz as usize;
    let frame = ((rate * STRETCH_FRAME_MS as usize / 1000) / 2 * 2).max(4);
    let hop = frame / 2;
    let tolerance = (rate * STRETCH_TOLERANCE_MS as usize / 1000).max(1) as i64;
    let at = |i: i64| -> f32 {
        usize::try_from(i)
            .ok()
            .and_then(|i| samples.get(i))
            .map_or(0.0, |&s| f32::from(s))
    };
    // A periodic Hann window: frames a hop apart sum to exactly 1, so
    // every output sample past the first hop is a plain sum of two frames.
    let window: Vec<f32> = (0..frame)
        .map(|i| (0.5 - 0.5 * (2.0 * PI * i as f64 / frame as f64).cos()) as f32)
        .collect();
    let out_len = (samples.len() as f64 / speed).round() as usize;
    let mut out = Vec::with_capacity(out_len + hop);
    // The output from the current frame's start on, still being summed.
    let mut pending = vec![0.0f32; frame];
    // Where in the input the previous frame was taken from.
    let mut previous: Option<i64> = None;
    while out.len() < out_len {
        let nominal = (out.len() as f64 * speed).round() as i64;
        let start = match previous {
            // The first frame has no predecessor to fade in against.
            None => nominal,
            Some(prev) => {
                // The input that would naturally follow the previous frame's
                // first half; the best candidate resembles it most.
                let natural = prev + hop as i64;
                best_shift(&at, natural, nominal, tolerance, hop)
            }
        };
        for (i, (sum, w)) in pending.iter_mut().zip(&window).enumerate() {
            let w = if previous.is_none() && i < hop {
                1.0
            } else {
                *w
            };
            *sum += at(start + i as i64) * w;
        }
        out.extend(pending[..hop].iter().map(|&v| to_i16(f64::from(v))));
        pending.copy_within(hop.., 0);
        pending[frame - hop..].fill(0.0);
        previous = Some(start);
    }
    out.truncate(out_len);
    out
}

/// The start within `nominal ± tolerance` whose next `length` samples
/// correlate best with those from `natural`: every fourth candidate first,
/// compared on every fourth sample, then the neighbours of the best one on
/// every second sample. Plenty for speech, and a tenth of the full search.
fn best_shift(
    at: &impl Fn(i64) -> f32,
    natural: i64,
    nominal: i64,
    tolerance: i64,
    length: usize,
) -> i64 {
    let score = |candidate: i64, step: usize| {
        let mut dot = 0.0f32;
        let mut energy = 1e-9f32;
        for i in (0..length as i64).step_by(step) {
            let c = at(candidate + i);
            dot += at(natural + i) * c;
            energy += c * c;
        }
        dot / energy.sqrt()
    };
    let best_of = |candidates: &mut dyn Iterator<Item = i64>, step: usize, first: i64| {
        let mut best = first;
        let mut best_score = f32::NEG_INFINITY;
        for candidate in candidates {
            let s = score(candidate, step);
            if s > best_score {
                best_score = s;
                best = candidate;
            }
        }
        best
    };
    let coarse = best_of(
        &mut ((nominal - tolerance)..=(nominal + tolerance)).step_by(4),
        4,
        nominal,
    );
    let (low, high) = (
        (coarse - 3).max(nominal - tolerance),
        (coarse + 3).min(nominal + tolerance),
    );
    best_of(&mut (low..=high), 2, coarse)
}

/// `speed` split between a provider that reaches `range` natively and
/// [`time_stretch`]: `(native, stretch)` with `native × stretch = speed`.
/// A speed that is not a positive number is 1.0.
pub fn split_speed(speed: f64, range: (f64, f64)) -> (f64, f64) {
    if !speed.is_finite() || speed <= 0.0 {
        return (1.0, 1.0);
    }
    let native = speed.clamp(range.0, range.1);
    (native, speed / native)
}

fn to_i16(value: f64) -> i16 {
    value
        .round()
        .clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(hz: f64, rate: u32, seconds: f64, amplitude: f64) -> Vec<i16> {
        let n = (f64::from(rate) * seconds) as usize;
        (0..n)
            .map(|i| (amplitude * (2.0 * PI * hz * i as f64 / f64::from(rate)).sin()) as i16)
            .collect()
    }

    /// Frequency of the dominant tone, from the upward zero crossings of
    /// the middle of the signal (edges skipped).
    fn frequency(samples: &[i16], rate: u32) -> f64 {
        let skip = samples.len() / 10;
        let middle = &samples[skip..samples.len() - skip];
        let crossings: Vec<usize> = middle
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w[0] < 0 && w[1] >= 0)
            .map(|(i, _)| i)
            .collect();
        let span = (crossings[crossings.len() - 1] - crossings[0]) as f64;
        (crossings.len() - 1) as f64 * f64::from(rate) / span
    }

    fn rms(samples: &[i16]) -> f64 {
        (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
    }

    #[test]
    fn a_resampled_sine_keeps_its_frequency_level_and_duration() {
        for (from, to) in [
            (22_050, 24_000),
            (24_000, 22_050),
            (22_050, 48_000),
            (44_100, 16_000),
        ] {
            let input = sine(440.0, from, 1.0, 10_000.0);

            let output = resample(&input, from, to);

            assert_eq!(output.len(), to as usize, "{from} → {to}");
            let f = frequency(&output, to);
            assert!((f - 440.0).abs() < 1.0, "{from} → {to}: {f} Hz");
            let (a, b) = (rms(&input[2000..]), rms(&output[2000..output.len() - 2000]));
            assert!((a - b).abs() / a < 0.02, "{from} → {to}: rms {a} vs {b}");
        }
    }

    #[test]
    fn resampling_matches_the_exact_sine_closely() {
        let output = resample(&sine(1000.0, 22_050, 0.5, 10_000.0), 22_050, 24_000);
        let exact = sine(1000.0, 24_000, 0.5, 10_000.0);

        let worst = output[200..output.len() - 200]
            .iter()
            .zip(&exact[200..])
            .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
            .max()
            .unwrap();

        assert!(worst < 30, "largest error {worst} of 10000");
    }

    #[test]
    fn downsampling_removes_what_the_new_rate_cannot_hold() {
        // 10 kHz fits 22.05 kHz but not 16 kHz (Nyquist 8 kHz): it must go,
        // not fold back to 6 kHz.
        let output = resample(&sine(10_000.0, 22_050, 0.5, 10_000.0), 22_050, 16_000);

        assert!(rms(&output[200..output.len() - 200]) < 30.0);
    }

    #[test]
    fn equal_rates_and_empty_input_are_left_alone() {
        assert_eq!(resample(&[1, 2, 3], 8_000, 8_000), [1, 2, 3]);
        assert!(resample(&[], 8_000, 16_000).is_empty());
        assert_eq!(resample(&[5], 0, 16_000), [5]);
    }

    #[test]
    fn a_stretched_sine_keeps_its_pitch_and_scales_its_duration() {
        let rate = 22_050;
        let input = sine(220.0, rate, 2.0, 10_000.0);
        for speed in [0.25, 0.5, 1.6, 3.5] {
            let output = time_stretch(&input, rate, speed);

            let expected = (input.len() as f64 / speed).round() as usize;
            assert_eq!(output.len(), expected, "speed {speed}");
            let f = frequency(&output, rate);
            assert!((f - 220.0).abs() < 3.0, "speed {speed}: {f} Hz");
            let level = rms(&output[output.len() / 10..output.len() * 9 / 10]);
            assert!(
                (level - rms(&input)).abs() / rms(&input) < 0.1,
                "speed {speed}: rms {level}"
            );
        }
    }

    #[test]
    fn speed_beyond_a_providers_range_is_left_to_the_stretch() {
        assert_eq!(split_speed(1.5, (0.5, 2.0)), (1.5, 1.0));
        assert_eq!(split_speed(4.0, (0.5, 2.0)), (2.0, 2.0));
        assert_eq!(split_speed(0.25, (0.5, 2.0)), (0.5, 0.5));
        assert_eq!(split_speed(f64::NAN, (0.5, 2.0)), (1.0, 1.0));
    }

    #[test]
    fn a_speed_of_one_or_nonsense_changes_nothing() {
        let input = sine(220.0, 8_000, 0.1, 1_000.0);

        assert_eq!(time_stretch(&input, 8_000, 1.0), input);
        assert_eq!(time_stretch(&input, 8_000, f64::NAN), input);
        assert_eq!(time_stretch(&input, 8_000, 0.0), input);
        assert!(time_stretch(&[], 8_000, 2.0).is_empty());
    }
}
