# The runs of one figure, shared by bench/report.awk and bench/breakdown.awk
# (given before them: awk -f runs.awk -f report.awk). A figure k has cnt[k]
# runs, val[k, 1..cnt[k]]. Plain POSIX awk (mawk): no asort.

function push(k, v) {
    cnt[k]++
    val[k, cnt[k]] = v + 0
}

# The median of a figure's runs, or "" with none.
function median(k,    n, i, j, t, s) {
    n = cnt[k] + 0
    if (n == 0)
        return ""
    for (i = 1; i <= n; i++)
        s[i] = val[k, i]
    for (i = 2; i <= n; i++) {
        t = s[i]
        for (j = i - 1; j >= 1 && s[j] > t; j--)
            s[j + 1] = s[j]
        s[j + 1] = t
    }
    if (n % 2)
        return s[(n + 1) / 2]
    return (s[n / 2] + s[n / 2 + 1]) / 2
}

# max / min of a figure's runs, or "" with fewer than 2 runs or a min <= 0.
function spread(k,    n, i, lo, hi) {
    n = cnt[k] + 0
    if (n < 2)
        return ""
    lo = hi = val[k, 1]
    for (i = 2; i <= n; i++) {
        if (val[k, i] < lo) lo = val[k, i]
        if (val[k, i] > hi) hi = val[k, i]
    }
    return lo > 0 ? hi / lo : ""
}
