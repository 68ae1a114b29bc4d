//! `lorasweep plot`'s figures, as PNG and SVG: final eval loss vs lr per init (log x, error bars
//! over seeds), the same zoomed so exploded cells don't flatten the interesting range (the
//! study clips them the same way), and eval-loss curves per init at one lr.
//!
//! PNG text is rendered with an embedded DejaVu Sans (ab_glyph), so no system font library is
//! needed; SVG text is left to the viewer's fonts. The `svg_*` functions draw the same figures
//! into a string (the dashboard inlines them), and [`svg_job_curves`] draws one job's train and
//! eval curves, downsampled to the figure's width.

use std::{path::Path, sync::Once};

use lorasweep_common::LoraInit;
use plotters::{
    coord::Shift,
    prelude::*,
    style::{FontStyle, register_font},
};

use crate::{
    Error,
    downsample::min_max,
    results::{Results, fmt_lr},
};

type Result<T> = std::result::Result<T, Error>;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// 1200×800 reads well on screen and in a README.
const SIZE: (u32, u32) = (1200, 800);

/// One colour per init, stable across figures (matplotlib's tab10 order).
pub fn colour(init: LoraInit) -> RGBColor {
    match init {
        LoraInit::Standard => RGBColor(31, 119, 180),
        LoraInit::Reversed => RGBColor(255, 127, 14),
        LoraInit::OrthoEye => RGBColor(44, 160, 44),
        LoraInit::OrthoQrConst => RGBColor(214, 39, 40),
        LoraInit::OrthoQrMatch => RGBColor(148, 103, 189),
    }
}

fn register() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_font("sans-serif", FontStyle::Normal, FONT).map_err(|_| Error::Font);
    });
    result
}

/// A job's eval curve: (micro-batch index, loss).
pub type Curve = Vec<(u64, f64)>;

/// Writes `loss_vs_lr.{png,svg}`, `loss_vs_lr_zoom.{png,svg}` and, when curves are given,
/// `eval_curves_lr_<lr>.{png,svg}` into `out`. Returns the paths written.
///
/// # Errors
/// When `out` cannot be written or a figure cannot be drawn.
pub fn write_all(
    results: &Results,
    curves: &[(LoraInit, Vec<Curve>)],
    curves_lr: f64,
    title: &str,
    out: &Path,
) -> Result<Vec<std::path::PathBuf>> {
    register()?;
    std::fs::create_dir_all(out).map_err(|source| Error::Io { path: out.to_path_buf(), source })?;
    let zoom = zoom_range(results);
    let curve_name = format!("eval_curves_lr_{}", fmt_lr(curves_lr));
    let mut written = Vec::new();
    // Each figure twice: raster for the README and quick looks, vector for papers.
    for (name, range) in [("loss_vs_lr", None), ("loss_vs_lr_zoom", zoom)] {
        let png = out.join(format!("{name}.png"));
        loss_vs_lr(BitMapBackend::new(&png, SIZE).into_drawing_area(), results, title, range)?;
        written.push(png);
        let svg = out.join(format!("{name}.svg"));
        loss_vs_lr(SVGBackend::new(&svg, SIZE).into_drawing_area(), results, title, range)?;
        written.push(svg);
    }
    if !curves.is_empty() {
        let png = out.join(format!("{curve_name}.png"));
        eval_curves(BitMapBackend::new(&png, SIZE).into_drawing_area(), curves, curves_lr, title)?;
        written.push(png);
        let svg = out.join(format!("{curve_name}.svg"));
        eval_curves(SVGBackend::new(&svg, SIZE).into_drawing_area(), curves, curves_lr, title)?;
        written.push(svg);
    }
    Ok(written)
}

/// The loss-vs-lr figure as SVG text, `zoomed` or whole, `size` pixels.
///
/// # Errors
/// When the figure cannot be drawn.
pub fn svg_loss_vs_lr(results: &Results, title: &str, zoomed: bool, size: (u32, u32)) -> Result<String> {
    register()?;
    let range = if zoomed { zoom_range(results) } else { None };
    let mut svg = String::new();
    loss_vs_lr(SVGBackend::with_string(&mut svg, size).into_drawing_area(), results, title, range)?;
    Ok(svg)
}

/// The eval curves per init at `lr` as SVG text.
///
/// # Errors
/// When the figure cannot be drawn.
pub fn svg_eval_curves(curves: &[(LoraInit, Vec<Curve>)], lr: f64, title: &str, size: (u32, u32)) -> Result<String> {
    register()?;
    let mut svg = String::new();
    eval_curves(SVGBackend::with_string(&mut svg, size).into_drawing_area(), curves, lr, title)?;
    Ok(svg)
}

/// One job's train and eval loss curves as SVG text. Each is reduced to the min and max of every
/// pixel column ([`min_max`]) first, so a million-point curve costs what the figure's width costs
/// and a one-step spike still shows. Returns the figure and how many points were drawn.
///
/// # Errors
/// When the figure cannot be drawn.
pub fn svg_job_curves(
    train: &[(u64, f64)],
    eval: &[(u64, f64)],
    title: &str,
    size: (u32, u32),
) -> Result<(String, usize)> {
    register()?;
    let buckets = size.0 as usize;
    let train = min_max(train, buckets);
    let eval = min_max(eval, buckets);
    let mut svg = String::new();
    let area = SVGBackend::with_string(&mut svg, size).into_drawing_area();
    area.fill(&WHITE).map_err(draw_err("the job's curves"))?;
    let all = train.iter().chain(&eval).filter(|p| p.1.is_finite());
    let (x_hi, y_lo, y_hi) =
        all.fold((1u64, f64::INFINITY, f64::NEG_INFINITY), |(x, lo, hi), p| (x.max(p.0), lo.min(p.1), hi.max(p.1)));
    let (y_lo, y_hi) = if y_lo.is_finite() {
        (y_lo - 0.02 * (y_hi - y_lo + 0.1), y_hi + 0.02 * (y_hi - y_lo + 0.1))
    } else {
        (0.0, 1.0)
    };
    let mut chart = ChartBuilder::on(&area)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0u64..x_hi, y_lo..y_hi)
        .map_err(draw_err("the job's curves"))?;
    chart
        .configure_mesh()
        .x_desc("micro-batch")
        .y_desc("loss")
        .y_label_formatter(&|y| format!("{y:.3}"))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(draw_err("the job's curves"))?;
    for (name, points, c) in [("train", &train, RGBColor(31, 119, 180)), ("eval", &eval, RGBColor(214, 39, 40))] {
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points.iter().copied().filter(|p| p.1.is_finite()), c.stroke_width(2)))
            .map_err(draw_err("the job's curves"))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
    }
    if !(train.is_empty() && eval.is_empty()) {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(draw_err("the job's curves"))?;
    }
    area.present().map_err(draw_err("the job's curves"))?;
    drop(chart);
    drop(area);
    Ok((svg, train.len() + eval.len()))
}

/// The zoomed y range: from the lowest mean to a little above the highest mean that is not an
/// exploded cell. A cell counts as exploded when it diverged or its mean is more than 25% above
/// the best mean of the sweep, the same eyeballed cut the study's zoomed plot makes.
fn zoom_range(r: &Results) -> Option<(f64, f64)> {
    let means: Vec<f64> = r.cells.iter().filter_map(|c| c.mean).filter(|m| m.is_finite()).collect();
    let lo = means.iter().copied().fold(f64::INFINITY, f64::min);
    if !lo.is_finite() {
        return None;
    }
    let hi = r
        .cells
        .iter()
        .filter(|c| c.diverged == 0)
        .filter_map(|c| Some(c.mean? + c.std.unwrap_or(0.0)))
        .filter(|m| m.is_finite() && *m <= lo * 1.25)
        .fold(lo, f64::max);
    let pad = ((hi - lo) * 0.08).max(1e-3);
    Some((lo - pad, hi + pad))
}

fn loss_vs_lr<DB: DrawingBackend>(
    area: DrawingArea<DB, Shift>,
    r: &Results,
    title: &str,
    y_range: Option<(f64, f64)>,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE).map_err(draw_err("the loss-vs-lr figure"))?;
    let (x_lo, x_hi) = match (r.lrs.first(), r.lrs.last()) {
        (Some(lo), Some(hi)) => (lo / 1.5, hi * 1.5),
        _ => (1e-4, 1e-2),
    };
    let (y_lo, y_hi) = y_range.unwrap_or_else(|| {
        let vals = r.cells.iter().filter_map(|c| Some(c.mean? + c.std.unwrap_or(0.0))).filter(|v| v.is_finite());
        let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if lo.is_finite() { (lo - 0.05 * (hi - lo + 0.1), hi + 0.05 * (hi - lo + 0.1)) } else { (0.0, 1.0) }
    });
    let caption = match y_range {
        Some(_) => format!("{title}: final eval loss vs lr (zoomed; exploded cells clipped)"),
        None => format!("{title}: final eval loss vs lr (mean ± std over seeds)"),
    };
    let mut chart = ChartBuilder::on(&area)
        .caption(caption, ("sans-serif", 28))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), y_lo..y_hi)
        .map_err(draw_err("the loss-vs-lr figure"))?;
    chart
        .configure_mesh()
        .x_desc("learning rate")
        .y_desc("final eval loss")
        .x_label_formatter(&|x| fmt_lr(*x))
        .y_label_formatter(&|y| format!("{y:.3}"))
        .label_style(("sans-serif", 18))
        .draw()
        .map_err(draw_err("the loss-vs-lr figure"))?;
    for (col, &init) in r.inits.iter().enumerate() {
        let c = colour(init);
        let points: Vec<(f64, f64, f64)> = (0..r.lrs.len())
            .filter_map(|row| {
                let cell = r.at(row, col);
                let m = cell.mean.filter(|m| m.is_finite())?;
                Some((r.lrs[row], m, cell.std.unwrap_or(0.0)))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(points.iter().map(|p| (p.0, p.1)), c.stroke_width(3)))
            .map_err(draw_err("the loss-vs-lr figure"))?
            .label(init.title())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
        chart
            .draw_series(points.iter().map(|&(x, m, s)| ErrorBar::new_vertical(x, m - s, m, m + s, c.filled(), 10)))
            .map_err(draw_err("the loss-vs-lr figure"))?;
        chart
            .draw_series(points.iter().map(|&(x, m, _)| Circle::new((x, m), 5, c.filled())))
            .map_err(draw_err("the loss-vs-lr figure"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 18))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(draw_err("the loss-vs-lr figure"))?;
    area.present().map_err(draw_err("the loss-vs-lr figure"))?;
    Ok(())
}

fn eval_curves<DB: DrawingBackend>(
    area: DrawingArea<DB, Shift>,
    curves: &[(LoraInit, Vec<Curve>)],
    lr: f64,
    title: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE).map_err(draw_err("the eval-curves figure"))?;
    let all = curves.iter().flat_map(|(_, cs)| cs.iter().flatten()).filter(|p| p.1.is_finite());
    let (x_hi, y_lo, y_hi) =
        all.fold((1u64, f64::INFINITY, f64::NEG_INFINITY), |(x, lo, hi), p| (x.max(p.0), lo.min(p.1), hi.max(p.1)));
    let (y_lo, y_hi) = if y_lo.is_finite() {
        (y_lo - 0.02 * (y_hi - y_lo + 0.1), y_hi + 0.02 * (y_hi - y_lo + 0.1))
    } else {
        (0.0, 1.0)
    };
    let mut chart = ChartBuilder::on(&area)
        .caption(format!("{title}: eval loss during training at lr {}", fmt_lr(lr)), ("sans-serif", 28))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0u64..x_hi, y_lo..y_hi)
        .map_err(draw_err("the eval-curves figure"))?;
    chart
        .configure_mesh()
        .x_desc("micro-batch")
        .y_desc("eval loss")
        .y_label_formatter(&|y| format!("{y:.3}"))
        .label_style(("sans-serif", 18))
        .draw()
        .map_err(draw_err("the eval-curves figure"))?;
    for (init, seeds) in curves {
        let c = colour(*init);
        for (k, curve) in seeds.iter().enumerate() {
            let series = chart
                .draw_series(LineSeries::new(curve.iter().copied().filter(|p| p.1.is_finite()), c.stroke_width(2)))
                .map_err(draw_err("the eval-curves figure"))?;
            if k == 0 {
                series
                    .label(init.title())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
            }
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 18))
        .draw()
        .map_err(draw_err("the eval-curves figure"))?;
    area.present().map_err(draw_err("the eval-curves figure"))?;
    Ok(())
}

fn draw_err<E: std::error::Error + Send + Sync + 'static>(
    what: &str,
) -> impl Fn(DrawingAreaErrorKind<E>) -> Error + '_ {
    move |e| Error::Draw { what: what.to_string(), cause: e.to_string() }
}

#[cfg(test)]
mod tests {
    use lorasweep_common::JobState;

    use super::*;
    use crate::results::JobResult;

    #[test]
    fn writes_png_and_svg_that_decode() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let mut jobs = Vec::new();
        for init in [LoraInit::Standard, LoraInit::Reversed] {
            for lr in [1e-4, 1e-3, 1e-2] {
                for seed in 0..2 {
                    let exploded = lr == 1e-2;
                    jobs.push(JobResult {
                        init,
                        lr,
                        seed,
                        state: if exploded { JobState::Diverged } else { JobState::Succeeded },
                        final_eval_loss: Some(if exploded { 8.0 } else { 2.2 + lr * 10.0 + seed as f64 * 0.01 }),
                    });
                }
            }
        }
        let r = Results::compute(&jobs);
        let zoom = zoom_range(&r).unwrap();
        assert!(zoom.1 < 3.0, "exploded cells are clipped from the zoomed range: {zoom:?}");
        let curves = vec![(LoraInit::Standard, vec![vec![(0, 3.0), (8, 2.5), (16, 2.3)]])];
        let dir = tempfile::tempdir()?;
        let written = write_all(&r, &curves, 1e-3, "test", dir.path())?;
        assert_eq!(written.len(), 6);
        for p in &written {
            let bytes = std::fs::read(p)?;
            if p.extension().is_some_and(|e| e == "png") {
                assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", p.display());
            } else {
                let text = String::from_utf8(bytes)?;
                assert!(text.contains("<svg") && text.contains("Standard"), "{}", p.display());
            }
        }
        Ok(())
    }

    #[test]
    fn svg_text_figures_draw_and_a_long_curve_is_reduced() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let train: Vec<(u64, f64)> = (0..1_000_000u64).map(|i| (i, 3.0 - i as f64 * 1e-6)).collect();
        let eval: Vec<(u64, f64)> = (0..100u64).map(|i| (i * 10_000, 2.5)).collect();
        let (svg, drawn) = svg_job_curves(&train, &eval, "a <job>", (900, 560))?;
        assert!(svg.starts_with("<svg") && svg.contains("a &lt;job&gt;"), "escaped title");
        assert!(drawn <= 2 * 900 + 100, "{drawn} points drawn");
        let r = Results::compute(&[JobResult {
            init: LoraInit::Standard,
            lr: 1e-3,
            seed: 0,
            state: lorasweep_common::JobState::Succeeded,
            final_eval_loss: Some(2.0),
        }]);
        assert!(svg_loss_vs_lr(&r, "t", true, (900, 560))?.contains("Standard"));
        assert!(svg_eval_curves(&[(LoraInit::Standard, vec![eval])], 1e-3, "t", (900, 560))?.contains("<svg"));
        Ok(())
    }
}
