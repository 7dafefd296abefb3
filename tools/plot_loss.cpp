// tools/plot_loss.cpp — ./plot_loss: draws a ./train log.csv into a PNG with gnuplot (train loss,
// and val loss where evaluated, against the step). ./train does this itself at the end of a run;
// this is for a log from elsewhere or a run in progress.
//   ./plot_loss -i out/log.csv -o curve.png [--title "my run"]
#include "../checkpoint.h"
#include "../cli.h"
#include "../plot.h"

static const char* PROG = "plot_loss";

static int plot_main(int argc, char** argv) {
    struct {
        std::string input, output, title;
    } a;
    Cli cli{PROG, "./plot_loss -i log.csv -o curve.png [--title TEXT]", "Draws ./train's log.csv into a PNG (gnuplot).",
            {
                {"-i", "--input", "FILE", "log.csv written by ./train", &a.input, nullptr, /*required=*/true},
                {"-o", "--output", "FILE", "PNG to write", &a.output, nullptr, /*required=*/true},
                {nullptr, "--title", "TEXT", "title of the plot (default: the log's path)", &a.title},
            }};
    cli.non_empty = true;
    if (!cli_parse(cli, argc, argv)) return 0;
    IoPaths io;
    io.input("-i", a.input);
    io.output_file("-o", a.output);
    io.check();
    read_log(a.input);  // a foreign file is one clear line, before gnuplot sees it
    const std::string why = plot_loss_curve(a.input, a.output, a.title.empty() ? a.input : a.title);
    if (!why.empty()) fail("%s: %s", a.output.c_str(), why.c_str());
    printf("%s: wrote %s\n", PROG, a.output.c_str());
    return 0;
}

int main(int argc, char** argv) { return run_main(PROG, plot_main, argc, argv); }
