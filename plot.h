// plot.h — the loss curve of a run: log.csv (train loss, and val loss where evaluated, against the
// step) drawn into a PNG by gnuplot. gnuplot is started directly (fork + exec, no shell) and fed
// its script on stdin, every path and the title quoted for gnuplot, so no file name can inject a
// command. Implemented in plot.cpp; used by ./train at the end of a run and by ./plot_loss.
#pragma once

#include <string>

// Draws log_path into png_path (written under a temporary name, then renamed). Returns "" on
// success, else why not (gnuplot missing, or its error), for the caller to print as one line.
std::string plot_loss_curve(const std::string& log_path, const std::string& png_path, const std::string& title);
