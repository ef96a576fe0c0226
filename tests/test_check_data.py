"""The `tuner check-data` report: layout, class table, sizes, bad files, warnings and a verdict."""


from image_folders import class_folders, train_val_folders

from tuner.train.check_data import check_data

# --- check_data ---


def test_check_data_reports_a_usable_dataset(demo_root):
    lines, usable = check_data(demo_root)
    text = "\n".join(lines)
    assert usable
    assert "train/val folders" in text and "circle" in text
    assert "image sizes" in text and lines[-1].startswith("verdict: usable")


def test_check_data_warns_about_imbalance_and_missing_val_images(tmp_path):
    class_folders(tmp_path / "train", {"big": 12, "mid": 10, "tiny": 2})
    class_folders(tmp_path / "val", {"big": 2, "mid": 2})
    (tmp_path / "val" / "tiny").mkdir()
    lines, usable = check_data(tmp_path)
    text = "\n".join(lines)
    assert usable
    assert "'tiny' has 2 training images, under a third of the median" in text
    assert "class imbalance" in text and "'tiny' has no validation images" in text


def test_check_data_reports_skipped_files_as_a_warning_and_stays_usable(tmp_path):
    train_val_folders(tmp_path)
    (tmp_path / "train" / "dog" / "GT-00001.csv").write_text("Filename;ClassId\n")
    lines, usable = check_data(tmp_path)
    assert usable and "warning: skipped 1 non-image file, e.g. train/dog/GT-00001.csv" in lines
    assert "unreadable or non-image files: 0" in lines and lines[-1].startswith("verdict: usable (1 warning)")


def test_check_data_lists_bad_files_and_is_not_usable(tmp_path):
    train_val_folders(tmp_path)
    for i in range(7):
        (tmp_path / "train" / "cat" / f"bad{i}.jpg").write_bytes(b"x")
    lines, usable = check_data(tmp_path)
    assert not usable
    assert "unreadable or non-image files: 7" in lines
    assert sum(line.startswith("  train/cat/bad") for line in lines) == 5 and "  ... and 2 more" in lines


def test_check_data_puts_the_error_in_the_report(tmp_path):
    lines, usable = check_data(tmp_path / "nowhere")
    assert not usable and any("does not exist" in line for line in lines)
