# holzinger_swineford.R
# lavaan reference numbers for Flourish's measurement-invariance tests
# (instruments/invariance.py, tests/instruments/test_invariance.py).
# Reproduce (Debian: apt-get install r-base-core r-cran-lavaan r-cran-jsonlite), from this folder:
#   Rscript holzinger_swineford.R
# Writes holzinger_swineford.csv (lavaan::HolzingerSwineford1939, 301 rows) and
# holzinger_swineford_lavaan.json (fit measures, LRTs, estimates). Tests never need R.
suppressPackageStartupMessages({ library(lavaan); library(jsonlite) })
options(warn = 1)

hs <- lavaan::HolzingerSwineford1939
write.csv(hs, "holzinger_swineford.csv", row.names = FALSE, na = "")
hs <- read.csv("holzinger_swineford.csv")     # fit on exactly the committed bytes

model <- "
  visual  =~ x1 + x2 + x3
  textual =~ x4 + x5 + x6
  speed   =~ x7 + x8 + x9
"
num <- function(x) unname(as.numeric(x))
measures <- c("npar", "fmin", "chisq", "df", "pvalue", "baseline.chisq", "baseline.df",
              "cfi", "tli", "rmsea", "srmr", "logl")
fm <- function(fit) as.list(setNames(num(fitMeasures(fit, measures)), gsub("\\.", "_", measures)))
est <- function(fit) {
  pe <- parameterEstimates(fit)
  if (is.null(pe$group)) pe$group <- 1L
  lapply(seq_len(nrow(pe)), function(i) list(lhs = pe$lhs[i], op = pe$op[i], rhs = pe$rhs[i],
                                              group = pe$group[i], est = pe$est[i]))
}

one <- cfa(model, data = hs, estimator = "ML")
configural <- cfa(model, data = hs, group = "school", estimator = "ML")
metric <- cfa(model, data = hs, group = "school", estimator = "ML", group.equal = c("loadings"))
scalar <- cfa(model, data = hs, group = "school", estimator = "ML",
              group.equal = c("loadings", "intercepts"))
lrt <- lavTestLRT(configural, metric, scalar)

out <- list(
  meta = list(R = R.version.string, lavaan = as.character(packageVersion("lavaan")),
              data = "lavaan::HolzingerSwineford1939 (301 rows), exported to holzinger_swineford.csv",
              model = model, estimator = "ML (lavaan defaults: std.lv=FALSE, likelihood='normal')",
              group = "school", group_sizes = as.list(table(hs$school))),
  one_group = list(fit = fm(one), estimates = est(one)),
  configural = list(fit = fm(configural), estimates = est(configural)),
  metric = list(fit = fm(metric), estimates = est(metric)),
  scalar = list(fit = fm(scalar), estimates = est(scalar)),
  lrt = list(model = rownames(lrt), df = num(lrt$Df), chisq = num(lrt$Chisq),
             delta_chisq = num(lrt[["Chisq diff"]]), delta_df = num(lrt[["Df diff"]]),
             delta_p = num(lrt[["Pr(>Chisq)"]]))
)
write_json(out, "holzinger_swineford_lavaan.json", auto_unbox = TRUE, pretty = TRUE,
           digits = NA, na = "null")
for (lv in c("one_group", "configural", "metric", "scalar")) {
  f <- out[[lv]]$fit
  cat(sprintf("%-10s chisq=%.4f df=%d cfi=%.4f tli=%.4f rmsea=%.4f srmr=%.4f\n",
              lv, f$chisq, as.integer(f$df), f$cfi, f$tli, f$rmsea, f$srmr))
}
