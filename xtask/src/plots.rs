//! PNG line charts for the reproduction report (BLEU vs λmax, BLEU vs κ, training curves, the
//! λ schedule), drawn with `plotters`' bitmap backend.
//!
//! Text is rendered with plotters' pure-Rust `ab_glyph` backend from a TrueType font read at
//! run time (`$PEMA_PLOT_FONT`, else DejaVu Sans, else the first `.ttf` under
//! `/usr/share/fonts`), so no system font libraries are linked. Without a font the chart is
//! still drawn, without any text (no title, tick labels or legend), and a warning says so.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use plotters::coord::Shift;
use plotters::prelude::*;

/// Width of every chart, pixels.
pub const WIDTH: u32 = 1024;
/// Height of every chart, pixels.
pub const HEIGHT: u32 = 640;

/// Family name under which the run-time font is registered with plotters.
const FONT_FAMILY: &str = "pema-sans";

/// Series colours (Tableau 10: distinguishable, colour-blind friendly order).
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];

/// One line of a chart: a legend label and its `(x, y)` points, drawn in the given order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points `(x, y)`; all coordinates must be finite.
    pub points: Vec<(f64, f64)>,
}

/// Draw `series` as a line chart with point markers and a legend into the PNG file `path`
/// ([`WIDTH`]×[`HEIGHT`]). A missing font is reported on stderr (see
/// [`line_chart_with_warning`] to get it back instead).
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> anyhow::Result<()> {
    if let Some(warning) = line_chart_with_warning(path, title, x_label, y_label, series)? {
        eprintln!("warning: {warning}");
    }
    Ok(())
}

/// [`line_chart`], returning the warning (`Some`) when no font was found and the chart was
/// drawn without text.
pub fn line_chart_with_warning(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> anyhow::Result<Option<String>> {
    let is_png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        bail!("chart {}: the file name must end in .png", path.display());
    }
    let (x_range, y_range) = ranges(series).with_context(|| format!("chart {}", path.display()))?;
    let (with_text, warning) = match font() {
        Ok(_) => (true, None),
        Err(why) => (
            false,
            Some(format!(
                "{}: {why}; drew the chart without text (no title, axis labels or legend)",
                path.display()
            )),
        ),
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let area = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    let text = with_text.then_some(Text {
        title,
        x_label,
        y_label,
    });
    render(&area, text, series, x_range, y_range)
        .and_then(|()| area.present().map_err(|e| e.to_string()))
        .map_err(|e| anyhow::anyhow!("drawing chart {}: {e}", path.display()))?;
    Ok(warning)
}

/// The texts of a chart (absent when no font is available).
struct Text<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
}

/// Axis ranges over all points, padded by 5% of the span (or by a unit-scaled margin when all
/// values are equal). Errors on no series, an empty series or a non-finite coordinate.
fn ranges(series: &[Series]) -> anyhow::Result<(std::ops::Range<f64>, std::ops::Range<f64>)> {
    if series.is_empty() {
        bail!("no series to draw");
    }
    let (mut x_min, mut x_max) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y_min, mut y_max) = (f64::INFINITY, f64::NEG_INFINITY);
    for s in series {
        if s.points.is_empty() {
            bail!("series `{}` has no points", s.label);
        }
        for &(x, y) in &s.points {
            if !x.is_finite() || !y.is_finite() {
                bail!("series `{}` has a non-finite point ({x}, {y})", s.label);
            }
            x_min = x_min.min(x);
            x_max = x_max.max(x);
            y_min = y_min.min(y);
            y_max = y_max.max(y);
        }
    }
    Ok((pad(x_min, x_max), pad(y_min, y_max)))
}

fn pad(min: f64, max: f64) -> std::ops::Range<f64> {
    let span = max - min;
    let margin = if span > 0.0 {
        span * 0.05
    } else if min != 0.0 {
        min.abs() * 0.1
    } else {
        1.0
    };
    (min - margin)..(max + margin)
}

fn render<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    text: Option<Text<'_>>,
    series: &[Series],
    x_range: std::ops::Range<f64>,
    y_range: std::ops::Range<f64>,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    area.fill(&WHITE).map_err(err)?;
    let mut builder = ChartBuilder::on(area);
    builder.margin(20);
    if let Some(text) = &text {
        builder
            .caption(text.title, (FONT_FAMILY, 26))
            .x_label_area_size(55)
            .y_label_area_size(75);
    }
    let mut chart = builder.build_cartesian_2d(x_range, y_range).map_err(err)?;
    {
        let mut mesh = chart.configure_mesh();
        mesh.max_light_lines(4)
            .light_line_style(RGBColor(0xee, 0xee, 0xee))
            .bold_line_style(RGBColor(0xcc, 0xcc, 0xcc));
        match &text {
            Some(text) => {
                mesh.x_desc(text.x_label)
                    .y_desc(text.y_label)
                    .label_style((FONT_FAMILY, 16))
                    .axis_desc_style((FONT_FAMILY, 18))
                    .x_label_formatter(&|v| tick(*v))
                    .y_label_formatter(&|v| tick(*v));
            }
            None => {
                // No labels at all: plotters would need a font for them.
                mesh.disable_axes();
            }
        }
        mesh.draw().map_err(err)?;
    }
    if text.is_none() {
        let (x, y) = (chart.x_range(), chart.y_range());
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x.start, y.start), (x.end, y.end)],
                BLACK.stroke_width(1),
            )))
            .map_err(err)?;
    }
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let line = chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(err)?;
        if text.is_some() {
            line.label(s.label.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
            });
        }
        // Marker shape varies with the series too, so lines stay apart in grey print.
        let style = color.filled();
        match i % 3 {
            0 => chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, style)))
                .map(|_| ()),
            1 => chart
                .draw_series(s.points.iter().map(|&p| TriangleMarker::new(p, 6, style)))
                .map(|_| ()),
            _ => chart
                .draw_series(
                    s.points
                        .iter()
                        .map(|&p| Cross::new(p, 5, color.stroke_width(2))),
                )
                .map(|_| ()),
        }
        .map_err(err)?;
    }
    if text.is_some() {
        let corner = legend_corner(series, &chart.x_range(), &chart.y_range());
        chart
            .configure_series_labels()
            .label_font((FONT_FAMILY, 16))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(corner)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// The legend corner whose neighbourhood (the outer 40% × 35% of the plot) holds the fewest
/// points; ties prefer upper right, upper left, lower right, lower left.
fn legend_corner(
    series: &[Series],
    x: &std::ops::Range<f64>,
    y: &std::ops::Range<f64>,
) -> SeriesLabelPosition {
    let (w, h) = (x.end - x.start, y.end - y.start);
    let corners = [
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::LowerLeft, false, false),
    ];
    let crowding = |right: bool, upper: bool| {
        series
            .iter()
            .flat_map(|s| &s.points)
            .filter(|(px, py)| {
                let fx = (px - x.start) / w;
                let fy = (py - y.start) / h;
                (if right { fx > 0.6 } else { fx < 0.4 })
                    && (if upper { fy > 0.65 } else { fy < 0.35 })
            })
            .count()
    };
    let mut best = (usize::MAX, SeriesLabelPosition::UpperRight);
    for (pos, right, upper) in corners {
        let n = crowding(right, upper);
        if n < best.0 {
            best = (n, pos);
        }
    }
    best.1
}

/// Tick label: integers without decimals, others with up to 4 significant decimals.
fn tick(v: f64) -> String {
    if v == v.round() && v.abs() < 1e9 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The registered font's path, or why none could be registered (looked up once).
fn font() -> Result<&'static Path, &'static str> {
    static FONT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FONT.get_or_init(register_font)
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(String::as_str)
}

fn register_font() -> Result<PathBuf, String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("PEMA_PLOT_FONT") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(PathBuf::from(
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    ));
    candidates.push(PathBuf::from("/usr/share/fonts/TTF/DejaVuSans.ttf"));
    candidates.push(PathBuf::from(
        "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    ));
    let mut found = Vec::new();
    find_ttf(Path::new("/usr/share/fonts"), 0, &mut found);
    found.sort();
    candidates.extend(found);
    for path in candidates.iter().filter(|p| p.is_file()).take(8) {
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        // plotters keeps fonts for the whole process; this happens once per process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        if plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, bytes).is_ok() {
            return Ok(path.clone());
        }
    }
    Err("no usable TrueType font (set PEMA_PLOT_FONT or install fonts-dejavu-core)".to_string())
}

/// `.ttf` files under `dir`, at most 4 levels deep.
fn find_ttf(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > 4 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            find_ttf(&path, depth + 1, out);
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("ttf"))
        {
            out.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

    /// Width and height from the IHDR chunk (which must come first).
    fn png_size(bytes: &[u8]) -> (u32, u32) {
        assert!(bytes.len() > 24, "PNG too short");
        assert_eq!(bytes[..8], PNG_SIGNATURE, "not a PNG signature");
        assert_eq!(&bytes[12..16], b"IHDR", "first chunk is not IHDR");
        let be =
            |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        assert_eq!(be(8), 13, "IHDR length");
        (be(16), be(20))
    }

    fn two_series() -> Vec<Series> {
        vec![
            Series {
                label: "GU".into(),
                points: vec![(0.2, 30.1), (0.4, 31.5), (0.6, 31.9), (0.8, 31.2)],
            },
            Series {
                label: "constant λ".into(),
                points: vec![(0.2, 29.0), (0.4, 30.2), (0.6, 30.0), (0.8, 29.1)],
            },
        ]
    }

    #[test]
    fn writes_a_png_of_the_expected_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/bleu_vs_lambda.png");
        let warning = line_chart_with_warning(&path, "BLEU vs λmax", "λmax", "BLEU", &two_series())
            .expect("chart");
        let bytes = std::fs::read(&path).expect("read png");
        assert_eq!(png_size(&bytes), (WIDTH, HEIGHT));
        match font() {
            Ok(_) => assert_eq!(warning, None),
            Err(_) => assert!(warning.is_some_and(|w| w.contains("without text"))),
        }
        // A single point and a constant series get non-empty, padded ranges.
        let one = [Series {
            label: "λ_k".into(),
            points: vec![(3.0, 0.5)],
        }];
        let path = dir.path().join("one.png");
        line_chart(&path, "schedule", "k", "λ_k", &one).expect("single point");
        assert_eq!(
            png_size(&std::fs::read(&path).expect("read")),
            (WIDTH, HEIGHT)
        );
    }

    /// Count pixels of exactly `color` in an RGB buffer.
    fn count(buf: &[u8], color: RGBColor) -> usize {
        buf.chunks_exact(3)
            .filter(|p| p == &[color.0, color.1, color.2])
            .count()
    }

    #[test]
    fn draws_series_without_a_font() {
        // No text at all: would fail if plotters tried to lay out any text, since the
        // default "sans-serif" family is never registered in this process.
        let mut buf = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
        {
            let area = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
            let series = two_series();
            let (x, y) = ranges(&series).expect("ranges");
            render(&area, None, &series, x, y).expect("render without text");
            area.present().expect("present");
        }
        assert!(count(&buf, PALETTE[0]) > 200, "{}", count(&buf, PALETTE[0]));
        assert!(count(&buf, PALETTE[1]) > 200, "{}", count(&buf, PALETTE[1]));
        assert!(count(&buf, PALETTE[2]) == 0);
        // Mostly white background.
        assert!(count(&buf, WHITE) > (WIDTH * HEIGHT / 2) as usize);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.png");
        let err = line_chart(&path, "t", "x", "y", &[]).expect_err("no series");
        assert!(format!("{err:#}").contains("no series"));
        let empty = [Series {
            label: "dev loss".into(),
            points: vec![],
        }];
        let err = line_chart(&path, "t", "x", "y", &empty).expect_err("empty series");
        assert!(format!("{err:#}").contains("`dev loss` has no points"));
        let nan = [Series {
            label: "s".into(),
            points: vec![(0.0, 1.0), (1.0, f64::NAN)],
        }];
        let err = line_chart(&path, "t", "x", "y", &nan).expect_err("NaN");
        assert!(format!("{err:#}").contains("non-finite"));
        let err = line_chart(&dir.path().join("x.svg"), "t", "x", "y", &two_series())
            .expect_err("not png");
        assert!(format!("{err:#}").contains(".png"));
        assert!(!path.exists());
    }

    #[test]
    fn ranges_are_padded() {
        let (x, y) = ranges(&two_series()).expect("ranges");
        assert!(
            (x.start - 0.17).abs() < 1e-9 && (x.end - 0.83).abs() < 1e-9,
            "{x:?}"
        );
        assert!(y.start < 29.0 && y.end > 31.9);
        let (x, y) = ranges(&[Series {
            label: "p".into(),
            points: vec![(0.0, 2.0)],
        }])
        .expect("single");
        assert_eq!(x, -1.0..1.0);
        assert!((y.start - 1.8).abs() < 1e-12 && (y.end - 2.2).abs() < 1e-12);
        assert_eq!(tick(3.0), "3");
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(1.0 / 3.0), "0.3333");
    }
}
