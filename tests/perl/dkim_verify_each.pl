#!/usr/bin/perl
# Verifies every DKIM signature of each message file with Perl's Mail::DKIM (independent of
# dkimpy and of sluice), answering key queries from a file of `NAME<TAB>TXT` lines. Prints per
# file: `FILE none`, or `FILE` then, for each signature top down, ` d=DOMAIN s=SELECTOR RESULT`.
#
# Usage: dkim_verify_each.pl KEYS-FILE FILE...
use strict;
use warnings;
use Mail::DKIM::Verifier;
use FindBin;
use lib $FindBin::Bin;
use TxtRecord;

my ($keys_file, @files) = @ARGV;
my %txt;
open(my $k, '<', $keys_file) or die "$keys_file: $!";
while (my $line = <$k>) {
    chomp $line;
    my ($name, $record) = split(/\t/, $line, 2);
    $txt{lc $name} = $record;
}
{
    no warnings 'redefine';
    *Mail::DKIM::DNS::query = sub {
        my ($domain, $type) = @_;
        my $record = $txt{lc $domain};
        return () unless $type eq 'TXT' && defined $record;
        return (TxtRecord::rr($domain, $record));
    };
}
for my $file (@files) {
    open(my $fh, '<:raw', $file) or die "$file: $!";
    my $dkim = Mail::DKIM::Verifier->new();
    while (<$fh>) { $dkim->PRINT($_) }
    $dkim->CLOSE;
    my @sigs = $dkim->signatures;
    if (!@sigs) { print "$file none\n"; next }
    print $file;
    printf " d=%s s=%s %s", $_->domain, $_->selector, $_->result for @sigs;
    print "\n";
}
