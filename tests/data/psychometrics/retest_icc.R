# retest_icc.R
# psych::ICC reference numbers for Flourish's test-retest ICCs (instruments/retest.py,
# tests/instruments/test_retest.py).
# Reproduce (Debian: apt-get install r-base-core r-cran-psych r-cran-jsonlite), from this folder:
#   Rscript retest_icc.R
# Writes retest_scores.csv (a small simulated scores table in Flourish's long layout:
# participant_id, wave, instrument, scale, score; some scores missing) and retest_icc.json.
# ICCs use psych::ICC(lmer = FALSE): the two-way ANOVA mean squares of Shrout & Fleiss (1979),
# with psych's F-based confidence limits (alpha = 0.05, two-sided), on the participants that
# have a score at both waves of each consecutive pair.
suppressPackageStartupMessages({ library(psych); library(jsonlite) })
options(warn = 1)
set.seed(20261129)

n <- 40
waves <- 0:2
sim_scale <- function(scale, centre, trait_sd, wave_shift, noise_sd, lo, hi) {
  trait <- rnorm(n, 0, trait_sd)
  do.call(rbind, lapply(waves, function(w) {
    s <- centre + trait + wave_shift * w + rnorm(n, 0, noise_sd)
    data.frame(participant_id = sprintf("p%03d", seq_len(n)), wave = w, instrument = "who5",
               scale = scale, score = round(pmin(pmax(s, lo), hi), 1))
  }))
}
d <- rbind(sim_scale("total", 55, 15, 3, 8, 0, 100), sim_scale("raw", 13, 3, 0.2, 2.5, 0, 25))
d$score[sample(nrow(d), 12)] <- NA           # missing scores: dropped pairwise per wave pair
write.csv(d, "retest_scores.csv", row.names = FALSE, na = "")
d <- read.csv("retest_scores.csv")

icc_block <- function(x) {
  r <- psych::ICC(x, lmer = FALSE, alpha = 0.05)
  res <- r$results
  row <- function(t) list(icc = res[t, "ICC"], f = res[t, "F"], df1 = res[t, "df1"],
                          df2 = res[t, "df2"], p = res[t, "p"],
                          lower = res[t, "lower bound"], upper = res[t, "upper bound"])
  list(n = nrow(x), icc2_1 = row("Single_random_raters"), icc3_1 = row("Single_fixed_raters"),
       icc1_1 = row("Single_raters_absolute"))
}

pairs <- list()
for (sc in unique(d$scale)) for (w in waves[-length(waves)]) {
  a <- d[d$scale == sc & d$wave == w, c("participant_id", "score")]
  b <- d[d$scale == sc & d$wave == w + 1, c("participant_id", "score")]
  m <- merge(a, b, by = "participant_id", suffixes = c("_a", "_b"))
  m <- m[complete.cases(m), ]
  pairs[[length(pairs) + 1]] <- c(list(instrument = "who5", scale = sc, wave_from = w,
                                       wave_to = w + 1),
                                  icc_block(as.matrix(m[, c("score_a", "score_b")])))
}

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges.
sf <- matrix(c(9, 2, 5, 8, 6, 1, 3, 2, 8, 4, 6, 8, 7, 1, 2, 6, 10, 5, 6, 9, 6, 2, 4, 7),
             ncol = 4, byrow = TRUE)
out <- list(meta = list(R = R.version.string, psych = as.character(packageVersion("psych")),
                        call = "psych::ICC(x, lmer = FALSE, alpha = 0.05)"),
            pairs = pairs,
            shrout_fleiss = c(list(data = sf), icc_block(sf)))
write_json(out, "retest_icc.json", auto_unbox = TRUE, pretty = TRUE, digits = NA, na = "null")
str(out$shrout_fleiss[c("icc2_1", "icc3_1")])
